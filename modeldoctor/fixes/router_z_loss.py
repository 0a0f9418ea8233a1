"""router-z-loss (placeholder)."""
