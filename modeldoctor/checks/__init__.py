"""Built-in checks, one per file; importing this package registers them (in battery order)."""
from . import overfit_batch, mean_collapse, query_coverage  # noqa: F401
