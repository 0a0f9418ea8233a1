"""The `modeldoctor` command line: thin Typer commands that parse, call one library function, and render.

Exit codes: 0 nothing at or above --fail-on; 1 findings at or above it; 2 bad input or usage (one
line on stderr; the traceback only with --debug); 3 an internal error in modeldoctor itself.
"""
from __future__ import annotations

import sys

import typer

try:  # Typer >= 0.20 vendors click; older releases use click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

from ..core.errors import InputError
from . import bench, catalogue, demo, diagnose, explain, fix, sample
from .common import err

app = typer.Typer(
    name="modeldoctor",
    help="Diagnose PyTorch models that run without errors but predict badly.\n\n"
    "Typical session: `modeldoctor diagnose ckpt.pt`, then `modeldoctor fix ckpt.pt --apply A,B --out patched.pt`, "
    "then `modeldoctor bench ckpt.pt --fix A,B` to measure what the fixes buy. `modeldoctor demo` runs all of it "
    "on a sample patient.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
# Registration order is the order `--help` lists the commands in.
app.command("diagnose")(diagnose.diagnose)
app.command("fix")(fix.fix)
app.command("bench")(bench.bench)
app.command("sample")(sample.sample)
app.command("demo")(demo.demo)
app.command("list")(catalogue.list_command)
app.command("explain")(explain.explain)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one-line usage errors with exit code 2."""
    try:
        code = app(args=argv, prog_name="modeldoctor", standalone_mode=False)
    except ClickException as error:
        if not error.format_message():  # no arguments: the help was printed, nothing went wrong but usage
            sys.exit(2)
        err.print(f"modeldoctor: error: {error.format_message()} (see --help)", markup=False, highlight=False, soft_wrap=True)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except Exception as error:  # reaches here only with --debug: show the traceback, keep the documented exit code
        import traceback

        traceback.print_exc()
        code = 2 if isinstance(error, InputError) else 3
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
