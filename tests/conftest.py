"""Shared pytest fixtures. Keep each group under its own header."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tiny models on 2 busy cores: spin-waiting OpenMP threads make torch 20-40x slower. Passive waiting
# must be set before torch is imported, and one intra-op thread is fastest for models this small.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

torch.set_num_threads(1)
REPO_ROOT = Path(__file__).resolve().parent.parent


# --- checkpoints and the command line (test_checkpoint.py, test_cli_input.py) -------------------

# An UNTRAINED sparse-field subject with little data: building and saving it takes milliseconds.
TINY_CONFIG = {"n_train_fields": 64, "n_eval_fields": 16, "steps": 20}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A modeldoctor-format checkpoint of an untrained, small sparse-field subject (read-only: copy it to change it)."""
    import modeldoctor

    subject = modeldoctor.build_subject("sparse-field", TINY_CONFIG)
    path = tmp_path_factory.mktemp("checkpoints") / "tiny.pt"
    modeldoctor.save_checkpoint(path, subject)
    return path


def run_cli(*args, cwd: str | Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m modeldoctor ARGS` in a fresh process; returns the CompletedProcess (text).

    A plain helper, not a fixture: `from conftest import run_cli`.
    """
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, "-m", "modeldoctor", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
    )


# --- trained sample patients (the test_patient_*.py files) -------------------------------------


@pytest.fixture(scope="session")
def trained_sample(tmp_path_factory):
    """trained_sample(name, variant) -> Path of a checkpoint trained once per session via the CLI.

    The first request for a sample trains its failing and healthy variants at once, in two
    processes (one torch thread each), since the tests ask for both.
    """
    folder = tmp_path_factory.mktemp("samples")
    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, variant: str) -> Path:
        if (name, variant) not in cache:
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
            runs = {}
            for kind in ("failing", "healthy"):
                path = folder / f"{name}-{kind}.pt"
                command = [sys.executable, "-m", "modeldoctor", "sample", name, "--out", str(path)]
                command += ["--healthy"] if kind == "healthy" else []
                runs[kind] = (path, subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for kind, (path, process) in runs.items():
                _, stderr = process.communicate(timeout=600)
                assert process.returncode == 0, stderr
                cache[name, kind] = path
        return cache[name, variant]

    return get
