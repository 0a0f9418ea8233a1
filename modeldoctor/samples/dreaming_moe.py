"""dreaming-moe (placeholder)."""
