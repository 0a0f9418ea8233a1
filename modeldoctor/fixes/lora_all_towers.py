"""lora-all-towers (placeholder)."""
