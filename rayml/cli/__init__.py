"""The `rayml` command (nothing imports this package)."""
