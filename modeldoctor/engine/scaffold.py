"""Scaffolding: the files a new check needs, as working stubs a developer then fills in.

    python -m modeldoctor.engine.scaffold check SLUG [--evidence subject|weights|trace] [--root DIR]

writes, under DIR (default: the current directory, a repository root):
- `modeldoctor/checks/<slug_with_underscores>.py`: the check, registered with `@register_check`;
- `checks/<slug>/cases.py`, `expected.json`, `README.md`: its case book (one triggering, one healthy case);
- `tests/test_<slug_with_underscores>.py`: its test.

The stub check runs as generated (a peak-to-RMS weight check, or a loss-rise check for traces), so its
case book and test pass before the TODOs are replaced. It never overwrites a file (exit 2), and it
prints the one line that registers the check in `modeldoctor/checks/__init__.py`.
"""
from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path
from string import Template
from types import SimpleNamespace

from ..core.evidence import EVIDENCE_KINDS
from .casebook import case_readme
from .files import atomic_write_text

SLUG = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")

DOCSTRING = Template('''\
TODO title: what goes wrong, in one line.

What it checks
TODO what is measured, on what, and when it fails or warns.
The generated stub $stub_does

Why it matters
TODO the symptom a user sees when this goes wrong, and where the thresholds come from.

Evidence
TODO the metrics and figures in the report.
The stub: $stub_evidence

Fixes
TODO the fixes a finding prescribes (their slugs, also in `fixes`), or what to change by hand.

Options
$option_doc
''')

CHECK_MODULE = Template('''\
"""$slug: TODO one line on what this check measures."""
from __future__ import annotations

$imports


@register_check
class $cls(Check):
    """$docstring
    """

    slug = "$slug"
    code = "$code"  # TODO: confirm this code is still free when the check lands
    title = "TODO short title"
    needs = "$evidence"
    fixes = ()  # every fix a finding can prescribe
    default_options = $options
$body''')

# ------------------------------------------------------------------------- evidence: subject and weights

TENSOR_DOC = dict(
    stub_does="reads every floating-point tensor and fails when the largest |value|\n"
              "exceeds `max_peak_to_rms` × the RMS of all values (a threshold relative to the model's scale).",
    stub_evidence="`peak_to_rms`, `peak`, `rms`, `peak_tensor`; a bar chart of the largest |value|\n"
                  "of the ten tensors that hold the largest ones.",
    option_doc="max_peak_to_rms (10): fail when the largest |value| exceeds this × the RMS of all values.\n"
               "TODO the real options, one line each: name (default): what it sets.",
    options='{"max_peak_to_rms": 10.0}',
)

TENSOR_BODY = Template('''
    def requires(self, $arg: $type) -> str | None:
        if not any(tensor.is_floating_point() for _, tensor in $named):
            return "$no_tensors"
        return None

    def measure(self, $arg: $type, ctx: CheckContext) -> Measurement:
        # TODO: measure what the check is about. The stub: the largest |value| against the RMS.
        peaks, squares, count = {}, 0.0, 0
        for name, tensor in $named:  # one tensor at a time
            if tensor.is_floating_point() and tensor.numel():
                values = tensor.detach().double()
                peaks[name] = values.abs().max().item()
                squares, count = squares + values.square().sum().item(), count + values.numel()
        rms = (squares / count) ** 0.5
        top = max(peaks, key=peaks.get)
        metrics = {"peak_to_rms": peaks[top] / rms if rms else 0.0, "peak": peaks[top], "rms": rms, "peak_tensor": top}
        return Measurement(metrics=metrics, figures=lambda: self.figures(peaks, rms))

    def figures(self, peaks: dict[str, float], rms: float) -> list[Figure]:
        shown = sorted(peaks, key=peaks.get, reverse=True)[:10]
        return [Figure("bar", "Largest |value| per tensor", {
            "labels": shown, "values": [peaks[name] for name in shown], "ylabel": "max |value|",
            "hlines": [{"y": rms * self.options["max_peak_to_rms"], "label": "fail above"}]})]

    def judge(self, measurement: Measurement) -> list[Finding]:
        m, limit = measurement.metrics, self.options["max_peak_to_rms"]
        said = f"largest |value| {m['peak']:.3g} in `{m['peak_tensor']}` is {m['peak_to_rms']:.3g}× the RMS {m['rms']:.3g}"
        if m["peak_to_rms"] > limit:
            return [Finding("fail", "spike", f"{said} (> {limit:g}×)", ("peak_to_rms", "peak_tensor"))]
        return [Finding("pass", "healthy", said, ("peak_to_rms",))]
''')

TENSOR_CASES = Template('''\
"""Cases for $slug: TODO one triggering and one healthy case of the real check."""
import torch
from torch import nn

$case_imports


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))  # 353 parameters


$case_wrapper


def case_spiked_weight():
    """One weight blew up to 1000 while the rest stay near 0.2: TODO the real triggering case."""
    model = mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = 1000.0
    return $wrap(model)


def case_default_init():
    """PyTorch's default initialisation: TODO the real healthy twin."""
    return $wrap(mlp())
''')

SUBJECT = dict(
    evidence_import="from ..core.subject import Subject",
    arg="subject", type="Subject", named="subject.model.named_parameters()", no_tensors="the model has no floating-point parameters",
    case_imports="from modeldoctor import regression_subject",
    case_wrapper='''def subject(model: nn.Module):
    x = torch.rand(64, 8, generator=torch.Generator().manual_seed(0))  # (64, 8)
    return regression_subject("$slug-case", model, (x, x[:, :1]), (x, x[:, :1]))''',
    wrap="subject",
)

WEIGHTS = dict(
    evidence_import="from ..core.evidence import Weights",
    arg="weights", type="Weights", named="weights.tensors()", no_tensors="the checkpoint holds no floating-point tensors",
    case_imports="from modeldoctor import Evidence, Weights",
    case_wrapper='''def weights(model: nn.Module) -> Evidence:
    """The model's state dict as checkpoint evidence (no subject: the check needs only weights)."""
    return Evidence(weights=Weights.from_state_dict(model.state_dict()))''',
    wrap="weights",
)

# ------------------------------------------------------------------------- evidence: trace

TRACE = dict(
    stub_does="compares the mean loss over the last fifth of the recorded steps with\n"
              "that over the first fifth, and fails when it is above `max_loss_ratio` × it (the loss rose).",
    stub_evidence="`loss_ratio`, `first_loss`, `last_loss`; the loss per recorded step.",
    option_doc="max_loss_ratio (1.0): fail when the late loss is above this × the early loss.\n"
               "TODO the real options, one line each: name (default): what it sets.",
    options='{"max_loss_ratio": 1.0}',
    evidence_import="from ..core.evidence import Trace",
)

TRACE_BODY = '''
    def requires(self, trace: Trace) -> str | None:
        if sum(step.loss is not None for step in trace.steps) < 2:
            return "the trace records fewer than two losses"
        return None

    def measure(self, trace: Trace, ctx: CheckContext) -> Measurement:
        # TODO: measure what the check is about. The stub: early against late loss.
        steps = [(step.step, step.loss) for step in trace.steps if step.loss is not None]
        fifth = max(1, len(steps) // 5)
        first = sum(loss for _, loss in steps[:fifth]) / fifth
        last = sum(loss for _, loss in steps[-fifth:]) / fifth
        metrics = {"loss_ratio": last / first if first else float("inf"), "first_loss": first, "last_loss": last}
        return Measurement(metrics=metrics, figures=lambda: self.figures(steps))

    def figures(self, steps: list[tuple[int, float]]) -> list[Figure]:
        return [Figure("line", "Recorded loss", {
            "series": [{"name": "loss", "x": [s for s, _ in steps], "y": [loss for _, loss in steps]}],
            "xlabel": "step", "ylabel": "loss"})]

    def judge(self, measurement: Measurement) -> list[Finding]:
        m, limit = measurement.metrics, self.options["max_loss_ratio"]
        said = f"late loss {m['last_loss']:.3g} is {m['loss_ratio']:.3g}× the early loss {m['first_loss']:.3g}"
        if m["loss_ratio"] > limit:
            return [Finding("fail", "rising", f"{said} (> {limit:g}×)", ("loss_ratio",))]
        return [Finding("pass", "healthy", said, ("loss_ratio",))]
'''

TRACE_CASES = '''\
"""Cases for $slug: TODO one triggering and one healthy case of the real check."""
from modeldoctor import Evidence, Trace, TraceStep


def trace(losses: list[float]) -> Evidence:
    """A recorded run with these losses, one per step (no subject: the check needs only the trace)."""
    return Evidence(trace=Trace(steps=[TraceStep(step=i, loss=loss) for i, loss in enumerate(losses)]))


def case_rising_loss():
    """The loss climbs from 1 to 3: TODO the real triggering case."""
    return trace([1.0 + 0.1 * i for i in range(21)])


def case_falling_loss():
    """The loss falls from 1 to 0.1: TODO the real healthy twin."""
    return trace([1.0 - 0.045 * i for i in range(21)])
'''

# ------------------------------------------------------------------------- the test

TEST_MODULE = Template('''\
"""$slug: tests beyond its case book (tests/test_casebook.py runs those). TODO: the check's edge cases."""
$pytest_import
from modeldoctor.core.registry import get_check, load_plugins
from modeldoctor.core.results import Measurement, derive

load_plugins()


def status_of(**metrics) -> str:
    return derive(get_check("$slug")().judge(Measurement(metrics=metrics)))[0]


def test_fails_above_the_threshold():
    assert status_of($failing) == "fail"


def test_passes_below_the_threshold():
    assert status_of($passing) == "pass"
$fix_test''')

FIX_TEST = '''

@pytest.mark.skip(reason="TODO: once a finding prescribes a fix, show that applying it removes the finding")
def test_prescribed_fix_removes_the_finding():
    from modeldoctor import apply_fixes, run_check

    subject = ...  # TODO: a triggering case, e.g. loaded with modeldoctor.engine.casebook.load_cases
    before = run_check(get_check("$slug")(), subject)
    after = run_check(get_check("$slug")(), apply_fixes(subject, before.fixes))
    assert before.status == "fail" and before.fixes and after.status == "pass"
'''

TEST_METRICS = {
    "subject": ('peak_to_rms=20.0, peak=1000.0, rms=50.0, peak_tensor="0.weight"',
                'peak_to_rms=2.0, peak=0.3, rms=0.15, peak_tensor="0.weight"'),
    "trace": ("loss_ratio=3.0, first_loss=1.0, last_loss=3.0", "loss_ratio=0.1, first_loss=1.0, last_loss=0.1"),
}
TEST_METRICS["weights"] = TEST_METRICS["subject"]
CASES = {"subject": ("spiked_weight", "default_init"), "weights": ("spiked_weight", "default_init"),
         "trace": ("rising_loss", "falling_loss")}


def next_code(checks_dir: Path) -> str:
    """One past the highest `code = "MDnnn"` among the existing check modules."""
    codes = [int(n) for path in checks_dir.glob("*.py") for n in re.findall(r'\bcode = "MD(\d+)"', path.read_text())]
    return f"MD{max(codes, default=0) + 1:03d}"


def render(slug: str, evidence: str, code: str) -> dict[str, str]:
    """Relative path -> text of every file the new check needs."""
    module = slug.replace("-", "_")
    if evidence == "trace":
        parts, body, cases = TRACE, TRACE_BODY, Template(TRACE_CASES).substitute(slug=slug)
    else:
        parts = {**TENSOR_DOC, **(SUBJECT if evidence == "subject" else WEIGHTS)}
        body = TENSOR_BODY.substitute(parts)
        cases = TENSOR_CASES.substitute(parts, slug=slug, case_wrapper=Template(parts["case_wrapper"]).substitute(slug=slug))
    docstring = DOCSTRING.substitute(parts)
    imports = sorted([parts["evidence_import"], "from ..core.check import Check, CheckContext",
                      "from ..core.registry import register_check",
                      "from ..core.results import Figure, Finding, Measurement"])
    check = CHECK_MODULE.substitute(
        parts, imports="\n".join(imports), slug=slug, cls="".join(word.capitalize() for word in slug.split("-")), code=code, evidence=evidence,
        docstring=textwrap.indent(docstring, "    ").strip(), body=body)
    # The README is the case book's, rendered from the very docstring the module holds.
    stand_in = SimpleNamespace(slug=slug, code=code, doc=lambda: inspect.cleandoc(docstring))
    trigger, healthy = CASES[evidence]
    failing, passing = TEST_METRICS[evidence]
    live = evidence == "subject"  # only a live subject can take a fix
    test = TEST_MODULE.substitute(slug=slug, failing=failing, passing=passing, pytest_import="import pytest\n" if live else "",
                                  fix_test=Template(FIX_TEST).substitute(slug=slug) if live else "")
    return {
        f"modeldoctor/checks/{module}.py": check,
        f"checks/{slug}/cases.py": cases,
        f"checks/{slug}/expected.json": json.dumps({"cases": {trigger: "fail", healthy: "pass"}}, indent=2) + "\n",
        f"checks/{slug}/README.md": case_readme(stand_in),
        f"tests/test_{module}.py": test,
    }


def scaffold_check(slug: str, evidence: str = "subject", root: Path = Path(".")) -> list[Path]:
    """Write the new check's files under `root`; ValueError (nothing written) when one exists."""
    checks_dir = root / "modeldoctor" / "checks"
    if not SLUG.fullmatch(slug):
        raise ValueError(f"slug {slug!r} must be lowercase words joined by hyphens, like 'weight-spikes'")
    if not checks_dir.is_dir():
        raise ValueError(f"{checks_dir} is not a folder: run from the repository root or pass --root")
    taken = [path.name for path in checks_dir.glob("*.py") if f'slug = "{slug}"' in path.read_text()]
    if taken:
        raise ValueError(f"a check with slug {slug!r} already exists in modeldoctor/checks/{taken[0]}")
    files = render(slug, evidence, next_code(checks_dir))
    existing = [name for name in files if (root / name).exists()]
    if existing:
        raise ValueError(f"refusing to overwrite {', '.join(existing)}")
    return [atomic_write_text(root / name, text) for name, text in files.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeldoctor.engine.scaffold", description=__doc__.splitlines()[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    check = kinds.add_parser("check", help="a new check: its module, case book and test")
    check.add_argument("slug", help="the check's name, e.g. weight-spikes")
    check.add_argument("--evidence", choices=EVIDENCE_KINDS, default="subject", help="what the check needs (default: subject)")
    check.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: the current directory)")
    args = parser.parse_args(argv)
    try:
        written = scaffold_check(args.slug, args.evidence, args.root)
    except ValueError as error:
        print(f"scaffold: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"created {path}")
    module = args.slug.replace("-", "_")
    print(f"\nRegister it: add this line to modeldoctor/checks/__init__.py (checks run in import order):\n"
          f"    from . import {module}  # noqa: F401\n"
          f"Then replace the TODOs; after editing the docstring, `python -m modeldoctor.engine.casebook` "
          f"regenerates checks/{args.slug}/README.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
