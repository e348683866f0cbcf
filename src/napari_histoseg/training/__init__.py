"""Training from folder pairs."""
