"""The tool version, in one place (core: every layer may read it)."""
__version__ = "0.1.0"
