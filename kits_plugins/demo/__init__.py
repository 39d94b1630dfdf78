"""End-to-end demo of the whole pipeline on synthetic data."""
