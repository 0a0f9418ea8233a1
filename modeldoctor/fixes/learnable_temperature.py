"""learnable-temperature (placeholder)."""
