"""Streamlit dashboards over recorded runs (reads Parquet only; never imports torch at start)."""
