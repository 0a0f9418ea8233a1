"""attention (placeholder: being written)."""
