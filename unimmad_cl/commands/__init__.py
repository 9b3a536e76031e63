"""CLI command implementations, one module per area; registered in the top-level cli.py."""
