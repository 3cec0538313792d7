"""Adapts gat_core to Ray Tune and MLflow, and the `gat-study` command line."""
