"""Balance and specialisation metrics, expert ablations and placement planning over recorded runs."""
