"""`modeldoctor fix`: write a patched copy of a checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..core.errors import InputError
from ..core.fix import apply_fixes, parse_fix_list
from ..core.registry import get_fix
from ..engine.checkpoint import save_checkpoint
from .common import ConfigOpt, Debug, Plugins, SubjectOpt, Trust, guard_output, handled, load, out


def fix(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to patch (it is never modified).")],
    apply: Annotated[str, typer.Option("--apply", help="Comma-separated fixes to apply, in order (see `modeldoctor list`).")],
    output: Annotated[Path, typer.Option("--out", help="Where to write the patched checkpoint.")],
    subject: SubjectOpt = None,
    config: ConfigOpt = None,
    plugin: Plugins = None,
    trust_checkpoint: Trust = False,
    debug: Debug = False,
) -> None:
    """Apply fixes to a copy of the checkpoint and write it to --out, with the fixes recorded in it."""
    with handled(debug):
        guard_output(output, checkpoint)
        loaded = load(checkpoint, subject, config, plugin, trust_checkpoint)
        names = parse_fix_list(apply)
        if not names:
            raise InputError("--apply needs at least one fix name")
        patched = apply_fixes(loaded.subject, names)
        save_checkpoint(output, patched, extra={"patched_from": loaded.sha256})
        retrain = [n for n in names if get_fix(n).needs_retraining]
        out.print(f"Wrote [bold]{escape(str(output))}[/] with fixes: {escape(', '.join(patched.fixes_applied))}", highlight=False)
        if retrain:
            out.print(f"Needs retraining to take effect: {', '.join(retrain)}. "
                      f"Measure it with `modeldoctor bench {escape(str(checkpoint))} --fix {','.join(names)}`.", highlight=False)
