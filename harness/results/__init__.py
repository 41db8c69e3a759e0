"""Results: run directories and rows (store), and the one rule that compares two figures (compare)."""
