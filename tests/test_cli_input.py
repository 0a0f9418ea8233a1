"""The command line on bad input (exit 2, one line on stderr, no traceback), fix/diagnose round trips,
HTML escaping, plugins (file, entry point) and the examples a user copies.

Each `run_cli` call starts a Python process (~2.5 s of CPU, mostly importing torch and scipy), so the
bad-input cases the issue names run two at a time in one module fixture, further bad-input cases and
commands whose output (not exit path) matters run in-process through `cli.main`.
"""
from __future__ import annotations

import hashlib
import json
import os
import runpy
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_CONFIG, run_cli

import modeldoctor
from modeldoctor.core import registry

EXAMPLES = REPO_ROOT / "examples"
PLUGIN_FILE = EXAMPLES / "custom_model_plugin.py"
ERROR_PREFIX = "modeldoctor: error:"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_one_line_error(result, *expected: str) -> str:
    """Exit 2, exactly one non-empty stderr line starting with the error prefix, no traceback anywhere."""
    context = f"\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.returncode == 2, context
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, context
    lines = result.stderr.splitlines()
    assert len(lines) == 1, context
    line = lines[0]
    assert line.startswith(ERROR_PREFIX) and line[len(ERROR_PREFIX):].strip(), context
    for text in expected:
        assert text in line, context
    return line


def cli_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """`modeldoctor ARGS` inside this process (for commands whose output, not exit path, is tested)."""
    from modeldoctor.cli import main

    with pytest.raises(SystemExit) as caught:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return caught.value.code, captured.out, captured.err


# --- bad input through the real CLI -----------------------------------------------------------

class RunsACommand:
    """Unpickling this calls os.system(`touch MARKER`): the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_checkpoint) -> Path:
    """A folder of broken inputs next to a copy of the tiny checkpoint and its small config."""
    folder = tmp_path_factory.mktemp("bad-input")
    shutil.copy(tiny_checkpoint, folder / "tiny.pt")
    data = tiny_checkpoint.read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    (folder / "random.pt").write_bytes(os.urandom(4096))
    (folder / "tiny.json").write_text(json.dumps(TINY_CONFIG))
    (folder / "broken.json").write_text("{steps: 5")
    raw = torch.load(tiny_checkpoint, weights_only=True)
    state = raw["state_dict"]
    torch.save(state, folder / "plain.pt")
    misfit = {k: v for k, v in state.items() if k != "head.bias"}
    misfit["head.weight"] = torch.zeros(2, 32)
    misfit["decoder.extra"] = torch.zeros(3)
    torch.save(misfit, folder / "misfit.pt")
    torch.save({**state, "head.weight": torch.full_like(state["head.weight"], float("nan"))}, folder / "nan.pt")
    torch.save({**raw, "extra": RunsACommand(folder / "pwned")}, folder / "evil.pt")
    return folder


# The bad input the issue names, each through a real `python -m modeldoctor` process:
# case -> (CLI arguments, run in the bad_files folder; substrings the error line must contain).
BAD_INPUT = {
    "missing-file": (["diagnose", "nosuch.pt"], ["checkpoint not found", "nosuch.pt"]),
    "truncated-checkpoint": (["diagnose", "truncated.pt"], ["truncated"]),
    "random-bytes": (["diagnose", "random.pt"], ["not a PyTorch checkpoint"]),
    "unknown-subject": (["diagnose", "plain.pt", "--subject", "nosuch"], ["unknown subject 'nosuch'", "sparse-field"]),
    "state-dict-does-not-fit": (
        ["diagnose", "misfit.pt", "--subject", "sparse-field", "--config", "tiny.json"],
        ["does not fit", "missing 1: head.bias", "unexpected 1: decoder.extra", "(2, 32) vs model (1, 32)"],
    ),
    "unknown-option": (["diagnose", "tiny.pt", "--no-such-option"], ["--no-such-option"]),
    "bad-fail-on": (["diagnose", "tiny.pt", "--fail-on", "sometimes"], ["--fail-on", "sometimes"]),
    "malicious-pickle": (["diagnose", "evil.pt", "--checks", "query-coverage"], ["pickled Python code", "--trust-checkpoint"]),
    "fix-out-is-input": (["fix", "tiny.pt", "--apply", "clamp-output", "--out", "./tiny.pt"], ["refusing to write", "input file"]),
    "missing-plugin-file": (["list", "--plugin", "nosuch_plugin.py"], ["plugin file not found"]),
    "explain-unknown": (["explain", "nosuch"], ["nosuch", "mean-collapse"]),
}
DEBUG_RUN = ["diagnose", "random.pt", "--debug"]


@pytest.fixture(scope="module")
def bad_input_runs(bad_files) -> dict:
    """Every BAD_INPUT case and DEBUG_RUN, two processes at a time (the cores are shared)."""
    before = sha256(bad_files / "tiny.pt")
    commands = {case: args for case, (args, _) in BAD_INPUT.items()} | {"debug": DEBUG_RUN}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(run_cli, *args, cwd=bad_files) for case, args in commands.items()}
        runs = {case: future.result() for case, future in futures.items()}
    assert sha256(bad_files / "tiny.pt") == before  # nothing wrote over the input
    return runs


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line(bad_input_runs, case):
    assert_one_line_error(bad_input_runs[case], *BAD_INPUT[case][1])


def test_malicious_pickle_never_runs(bad_input_runs, bad_files, tmp_path):
    assert bad_input_runs["malicious-pickle"].returncode == 2
    assert not (bad_files / "pwned").exists()  # the payload's `touch` never ran
    # Control: the same payload does run when unpickled without protection (so the check above means something).
    import pickle

    pickle.loads(pickle.dumps(RunsACommand(tmp_path / "control")))
    assert (tmp_path / "control").exists()


def test_debug_shows_traceback(bad_input_runs):
    result = bad_input_runs["debug"]
    assert result.returncode == 2, result.stderr
    assert "Traceback" in result.stderr
    assert "InputError" in result.stderr.strip().splitlines()[-1]


# More bad input, in-process (cheap): the same one-line contract, checked through cli.main.
MORE_BAD_INPUT = {
    "missing-against": (["diagnose", "plain.pt", "--against", "nosuch.pt"], ["checkpoint not found", "nosuch.pt"]),
    "bad-budget": (["diagnose", "tiny.pt", "--budget", "0"], ["--budget"]),
    "missing-argument": (["diagnose"], ["checkpoint"]),
    "missing-config": (["diagnose", "tiny.pt", "--config", "nosuch.json"], ["config file not found"]),
    "broken-config": (["diagnose", "tiny.pt", "--config", "broken.json"], ["not valid JSON"]),
    "unknown-check": (["diagnose", "tiny.pt", "--checks", "nosuch-check"], ["unknown check 'nosuch-check'"]),
    "unknown-fix": (["fix", "tiny.pt", "--apply", "nosuch-fix", "--out", "out.pt"], ["unknown fix 'nosuch-fix'"]),
    "fix-without-apply": (["fix", "tiny.pt", "--out", "out.pt"], ["--apply"]),
    "missing-plugin-module": (["list", "--plugin", "nosuch_plugin_module"], ["plugin module not found"]),
    "json-out-is-input": (["diagnose", "tiny.pt", "--json", "tiny.pt"], ["refusing to write"]),
}


@pytest.mark.parametrize("case", list(MORE_BAD_INPUT))
def test_more_bad_input_in_process(bad_files, monkeypatch, capsys, case):
    monkeypatch.chdir(bad_files)
    before = sha256(bad_files / "tiny.pt")
    args, expected = MORE_BAD_INPUT[case]
    code, out, err = cli_in_process(capsys, *args)
    assert_one_line_error(subprocess.CompletedProcess(args, code, out, err), *expected)
    assert not (bad_files / "out.pt").exists()
    assert sha256(bad_files / "tiny.pt") == before


# --- fix, diagnose and the HTML report --------------------------------------------------------

def test_fix_writes_a_new_checkpoint_and_keeps_the_input(tmp_path, tiny_checkpoint):
    source = tmp_path / "input.pt"
    shutil.copy(tiny_checkpoint, source)
    before = sha256(source)
    patched = tmp_path / "patched.pt"
    result = run_cli("fix", source, "--apply", "clamp-output,random-queries", "--out", patched)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert sha256(source) == before
    meta = torch.load(patched, weights_only=True)["modeldoctor"]
    assert meta["fixes"] == ["clamp-output", "random-queries"]
    assert meta["patched_from"] == before

    result = run_cli("diagnose", patched, "--checks", "query-coverage", "--json", tmp_path / "report.json")
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["subject"]["fixes_applied"] == ["clamp-output", "random-queries"]
    assert [r["status"] for r in report["results"]] != ["error"]


def test_html_escapes_config_strings(tmp_path, tiny_checkpoint):
    script = "<script>alert(1)</script>"
    config = tmp_path / "xss.json"
    config.write_text(json.dumps({"note": script}))
    html = tmp_path / "report.html"
    result = run_cli("diagnose", tiny_checkpoint, "--checks", "query-coverage", "--config", config, "--html", html)
    assert result.returncode in (0, 1), result.stderr
    page = html.read_text()
    assert script not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# --- plugins and examples ----------------------------------------------------------------------

def test_plugin_file_lists_its_subject(capsys):
    code, out, _ = cli_in_process(capsys, "list", "--plugin", PLUGIN_FILE)
    assert code == 0
    assert "sine-mlp" in out


def test_explain_prints_the_doc_headings(capsys):
    code, out, _ = cli_in_process(capsys, "explain", "mean-collapse")
    assert code == 0
    for heading in ("What it checks", "Why it matters", "Evidence", "Fixes", "Options"):
        assert heading in out


def test_plugin_subject_end_to_end(tmp_path):
    """Save a checkpoint of the example plugin's model from Python, diagnose it with the CLI and --plugin."""
    modeldoctor.load_plugin(str(PLUGIN_FILE))
    modeldoctor.seed_everything(0)
    subject = modeldoctor.build_subject("sine-mlp", {"steps": 30})
    modeldoctor.train(subject)
    checkpoint = modeldoctor.save_checkpoint(tmp_path / "sine.pt", subject)

    report_path = tmp_path / "sine.json"
    result = run_cli("diagnose", checkpoint, "--plugin", PLUGIN_FILE, "--json", report_path,
                     "--checks", "mean-collapse,overfit-batch,query-coverage")
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    report = json.loads(report_path.read_text())
    assert report["subject"]["name"] == "sine-mlp"
    statuses = {r["check"]: r["status"] for r in report["results"]}
    assert set(statuses) == {"mean-collapse", "overfit-batch", "query-coverage"}
    assert all(status in ("pass", "warn", "fail", "skip") for status in statuses.values()), report["results"]
    assert statuses["query-coverage"] == "skip"  # the plugin declares no query coordinates


def test_entry_point_package_registers_its_subject(monkeypatch):
    """What `pip install ./examples/entrypoint_package` gives, without installing it."""
    monkeypatch.syspath_prepend(str(EXAMPLES / "entrypoint_package"))
    fake = EntryPoint(name="sine-mlp-ep", value="md_example_plugin:build", group="modeldoctor.subjects")

    def fake_entry_points(*, group: str):
        return [fake] if group == "modeldoctor.subjects" else []

    registry.load_plugins()  # built-ins (and real entry points) registered before the snapshot
    saved = {name: dict(table) for name, table in registry._GROUPS.items()}
    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_loaded", False)  # restored (True) after the test
    try:
        registry.load_plugins()
        assert "sine-mlp-ep" in registry.SUBJECTS
        subject = registry.build_subject("sine-mlp-ep", {"n_train": 64, "n_eval": 32})
        assert subject.name == "sine-mlp-ep"
        batch = next(iter(subject.train_batches))
        assert isinstance(batch, tuple)
        assert torch.isfinite(subject.loss(subject.model, batch))
    finally:
        for name, table in registry._GROUPS.items():
            table.clear()
            table.update(saved[name])
        sys.modules.pop("md_example_plugin", None)


def test_entry_point_package_metadata():
    import tomllib

    project = tomllib.loads((EXAMPLES / "entrypoint_package" / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["modeldoctor.subjects"] == {"sine-mlp-ep": "md_example_plugin:build"}


def test_training_script_example(capsys):
    example = runpy.run_path(str(EXAMPLES / "use_from_training_script.py"))  # not as __main__: no run yet
    results = example["main"](steps=30)
    assert {r.check for r in results} >= {"mean-collapse", "overfit-batch", "query-coverage"}
    assert all(r.status != "error" for r in results), [r.summary for r in results]
    out = capsys.readouterr().out
    assert "mean-collapse" in out and '"counts"' in out


def test_outputs_to_a_device_are_written_in_place_not_replaced(tmp_path):
    """Atomic writes rename a temporary file over the target; that must never happen to /dev/null."""
    import stat

    from modeldoctor.engine.files import atomic_write_text

    atomic_write_text("/dev/null", "{}")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    atomic_write_text(tmp_path / "out.json", "{}")
    assert (tmp_path / "out.json").read_text() == "{}"
