"""expert-balance (placeholder: being written)."""
