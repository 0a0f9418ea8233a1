"""`diagnose`: the library face of `modeldoctor diagnose`, from a checkpoint (or evidence) to a report.

    report = modeldoctor.diagnose("ckpt.pt", checks=["mean-collapse"])   # modeldoctor.report/2 dict

The command line is a thin layer over this function: it parses flags, calls it, and renders.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..core.evidence import Evidence
from ..core.registry import load_plugin, load_plugins
from ..core.subject import Subject
from .checkpoint import LoadedCheckpoint, load_checkpoint, read_config_file
from .layer_table import weights_summary
from .runner import ProgressFn, as_evidence, build_report, run_battery, select_checks, subject_info


def load_plugin_specs(plugins: Iterable[str] = ()) -> None:
    """The built-ins and entry points, then each `--plugin` file or module, in order."""
    load_plugins()
    for spec in plugins or ():
        load_plugin(str(spec))


def resolve_config(config: dict | str | Path | None) -> dict | None:
    """Config overrides: a dict as it is, or a JSON/TOML file read into one."""
    if config is None or isinstance(config, dict):
        return config
    return read_config_file(config)


def read_target(target, *, subject: str | None = None, config: dict | str | Path | None = None,
                trust: bool = False, against: str | Path | None = None):
    """A checkpoint path read into a LoadedCheckpoint; a loaded checkpoint, a Subject or Evidence as it is.

    `subject`, `config`, `trust` and `against` say how to read a checkpoint; they are an error with anything else.
    """
    if isinstance(target, (str, Path)):
        return load_checkpoint(target, subject=subject, config=resolve_config(config), trust=trust, against=against)
    if subject is not None or config is not None or trust or against is not None:
        raise ValueError("subject, config, trust and against apply only when the target is a checkpoint path")
    if not isinstance(target, (LoadedCheckpoint, Subject, Evidence)):
        raise TypeError(f"diagnose needs a checkpoint path, a Subject or an Evidence, not {type(target).__name__}")
    return target


def evidence_of(target: LoadedCheckpoint | Subject | Evidence) -> Evidence:
    return target.evidence if isinstance(target, LoadedCheckpoint) else as_evidence(target)


def info_of(target: LoadedCheckpoint | Subject | Evidence) -> dict:
    """What the report says about what was examined (waits for a checkpoint's hash, computed meanwhile)."""
    if isinstance(target, LoadedCheckpoint):
        return subject_info(target.subject, target.path, target.sha256)
    if isinstance(target, Subject):
        return subject_info(target)
    weights = target.weights
    return subject_info(target.subject, weights and weights.path, weights and weights.sha256)


def load_target(target, **how) -> tuple[Evidence, dict]:
    """(evidence, subject info for the report) of a checkpoint path, a loaded checkpoint, a Subject or Evidence."""
    target = read_target(target, **how)
    return evidence_of(target), info_of(target)


def split_names(names: str | Iterable[str] | None) -> list[str]:
    """Check names from "a,b" or ["a", "b"]; empty means all."""
    items = names.split(",") if isinstance(names, str) else list(names or [])
    return [name.strip() for name in items if name.strip()]


def diagnose(
    target,
    *,
    subject: str | None = None,
    config: dict | str | Path | None = None,
    plugins: Iterable[str] = (),
    trust: bool = False,
    against: str | Path | None = None,
    checks: str | Iterable[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    budget_s: float | None = 120.0,
    figures: bool = False,
    progress: ProgressFn | None = None,
) -> dict:
    """Run the checks on `target` and return the `modeldoctor.report/2` dict.

    target: a checkpoint path (read with `load_checkpoint`; `subject`, `config` (a dict or a JSON/TOML
    file), `trust` and `against` (a checkpoint to compare with) as there), a `LoadedCheckpoint`, a
    `Subject`, or an `Evidence` bundle. A checkpoint that names no subject is diagnosed from its weights.
    plugins: files or modules that register subjects, checks or fixes, imported first.
    checks: names to run (default all); options: {check slug: {option: value}}.
    figures: build each check's figures (only worth it when something will draw them).
    progress: called (event "start"|"end", slug, result) around each check.
    Bad input raises InputError with one clear line.
    """
    load_plugin_specs(plugins)
    read = read_target(target, subject=subject, config=config, trust=trust, against=against)
    evidence = evidence_of(read)
    selected = select_checks(split_names(checks))
    results = run_battery(evidence, selected, options=options, seed=seed, budget_s=budget_s,
                          progress=progress, figures=figures)
    info = info_of(read)  # after the checks: the file was hashed while they ran
    notes = read.notes if isinstance(read, LoadedCheckpoint) else []
    section = weights_summary(evidence.weights, results, notes) if evidence.weights is not None else None
    return build_report(info, results, evidence=evidence.kinds(), figures=figures, weights=section)
