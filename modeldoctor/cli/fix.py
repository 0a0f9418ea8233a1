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
from ..engine.weight_fixes import patch_subject_weights, patch_weights
from .common import ConfigOpt, Debug, Plugins, SubjectOpt, Trust, guard_output, handled, load, out


def fix(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to patch, in any format `diagnose` reads (it is never modified).")],
    apply: Annotated[str, typer.Option("--apply", help="Comma-separated fixes to apply, in order (see `modeldoctor list`).")],
    output: Annotated[Path, typer.Option("--out", help="Where to write the patched checkpoint (a new folder for a Hugging Face folder).")],
    subject: SubjectOpt = None,
    config: ConfigOpt = None,
    plugin: Plugins = None,
    trust_checkpoint: Trust = False,
    debug: Debug = False,
) -> None:
    """Apply fixes to a copy of the checkpoint and write it to --out, with the fixes recorded in it.

    Weights fixes (such as reinit-dead-units) work on any checkpoint and keep its format; the other
    fixes change a live subject, so the checkpoint must name one (or pass --subject).
    """
    with handled(debug):
        guard_output(output, *(path for path in (checkpoint, config) if path is not None))
        loaded = load(checkpoint, subject, config, plugin, trust_checkpoint)
        names = parse_fix_list(apply)
        if not names:
            raise InputError("--apply needs at least one fix name")
        on_weights = [name for name in names if get_fix(name).needs == "weights"]
        on_subject = [name for name in names if name not in on_weights]
        if loaded.subject is None:
            if on_subject:
                raise InputError(f"{', '.join(on_subject)} change(s) a live subject, and {checkpoint} names none: "
                                 f"{loaded.why_no_subject or 'pass --subject NAME'}")
            manifest = patch_weights(checkpoint, on_weights, output, trust=trust_checkpoint, sha256=loaded.sha256)
            out.print(f"Wrote [bold]{escape(str(output))}[/] with fixes: {escape(', '.join(names))} "
                      f"({len(manifest['replaced'])} tensor(s) replaced; everything else kept as it was)", highlight=False)
            out.print(f"Check it with `modeldoctor diagnose {escape(str(output))}`.", highlight=False)
            return
        patched = apply_fixes(loaded.subject, on_subject)
        if on_weights:
            patch_subject_weights(patched, on_weights)
        save_checkpoint(output, patched, extra={"patched_from": loaded.sha256})
        retrain = [n for n in names if get_fix(n).needs_retraining]
        out.print(f"Wrote [bold]{escape(str(output))}[/] with fixes: {escape(', '.join(patched.fixes_applied))}", highlight=False)
        if retrain:
            out.print(f"Needs retraining to take effect: {', '.join(retrain)}. "
                      f"Measure it with `modeldoctor bench {escape(str(checkpoint))} --fix {','.join(names)}`.", highlight=False)
