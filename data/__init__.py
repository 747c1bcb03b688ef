"""Corpus recipe and tokenizer for the small DeepSeek-V3 we train (see data/README.md)."""
