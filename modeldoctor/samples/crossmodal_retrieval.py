"""crossmodal-retrieval (placeholder)."""
