"""noisy-top-k (placeholder)."""
