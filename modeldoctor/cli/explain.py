"""`modeldoctor explain`: the documentation of one check or fix."""
from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from ..core.errors import InputError
from ..core.registry import CHECKS, FIXES
from .common import Debug, Plugins, handled, load_plugins, out


def explain(name: Annotated[str, typer.Argument(help="A check or fix slug.")], plugin: Plugins = None, debug: Debug = False) -> None:
    """Show the documentation of a check or a fix."""
    with handled(debug):
        load_plugins(plugin)
        item = CHECKS.get(name) or FIXES.get(name)
        if item is None:
            raise InputError(f"no check or fix named {name!r} (known: {', '.join(sorted([*CHECKS, *FIXES]))})")
        kind = "check" if name in CHECKS else "fix"
        out.rule(f"[bold]{escape(str(name))}[/] ({kind})")
        out.print(item.doc(), markup=False, highlight=False)
