"""`modeldoctor list`: what is registered (checks, fixes, subjects and sample patients)."""
from __future__ import annotations

from rich.table import Table

from ..core.registry import CHECKS, FIXES, SUBJECTS
from ..samples import SAMPLES
from .common import Debug, Plugins, handled, load_plugins, out


def list_command(plugin: Plugins = None, debug: Debug = False) -> None:
    """List the registered subjects, sample patients, checks and fixes."""
    with handled(debug):
        load_plugins(plugin)
        for title, rows, columns in (
            ("Checks", [(slug, c.code, c.needs, c.summary_line()) for slug, c in CHECKS.items()], ("check", "code", "needs", "what it checks")),
            ("Fixes", [(slug, f.kind, "yes" if f.needs_retraining else "no", f.summary_line()) for slug, f in FIXES.items()], ("fix", "kind", "retrain", "what it does")),
            ("Subjects", [(name, "sample" if name in SAMPLES else "", SAMPLES[name].summary if name in SAMPLES else (getattr(f, "__doc__", "") or "").strip().split("\n")[0])
                          for name, f in SUBJECTS.items()], ("subject", "kind", "about")),
        ):
            table = Table(title=title, title_justify="left", title_style="bold")
            for column in columns:
                table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(*row)
            out.print(table)
