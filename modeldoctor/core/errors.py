"""Errors a user can act on. The CLI turns them into one line on stderr and exit code 2."""


class InputError(Exception):
    """Bad input: a missing or corrupt file, an unknown name, a model that does not fit, a bad flag."""


class BudgetExceeded(Exception):
    """A check ran past its time budget (raised cooperatively by the training loop)."""
