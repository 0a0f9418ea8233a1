"""load-balance-loss (placeholder)."""
