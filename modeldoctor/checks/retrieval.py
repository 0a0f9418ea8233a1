"""retrieval (placeholder: being written)."""
