"""The scaffold writes a new check that imports, registers, and passes its own case book and test."""
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modeldoctor.core.check import DOC_HEADINGS
from modeldoctor.core.registry import CHECKS, load_plugins
from modeldoctor.engine.casebook import case_readme, load_cases
from modeldoctor.engine.runner import run_check
from modeldoctor.engine.scaffold import main, scaffold_check

REPO = Path(__file__).resolve().parents[1]
load_plugins()


@pytest.fixture
def root(tmp_path):
    """A copy root: the package's check modules (so codes and slugs in use are seen), nothing else."""
    shutil.copytree(REPO / "modeldoctor" / "checks", tmp_path / "modeldoctor" / "checks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def load_module(name: str, path: Path, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def skipped(function) -> bool:
    return any(mark.name == "skip" for mark in getattr(function, "pytestmark", []))


@pytest.mark.parametrize("evidence", ["subject", "weights", "trace"])
def test_scaffolded_check_registers_and_passes_its_case_book_and_test(evidence, root, monkeypatch, capsys):
    slug = f"scaffold-{evidence}-probe"
    module = slug.replace("-", "_")
    assert main(["check", slug, "--evidence", evidence, "--root", str(root)]) == 0
    assert f"from . import {module}  # noqa: F401" in capsys.readouterr().out

    monkeypatch.setitem(CHECKS, slug, None)  # the registry forgets the new check after the test
    load_module(f"modeldoctor.checks.{module}", root / "modeldoctor" / "checks" / f"{module}.py", monkeypatch)
    check_class = CHECKS[slug]
    assert check_class is not None and check_class.slug == slug and check_class.needs == evidence
    assert check_class.code not in {c.code for s, c in CHECKS.items() if s != slug}
    lines = check_class.doc().splitlines()
    assert all(heading in lines for heading in DOC_HEADINGS)

    folder = root / "checks" / slug
    builders, expected = load_cases(folder)
    assert set(builders) == set(expected) and sorted(expected.values()) == ["fail", "pass"]
    for name, build in builders.items():
        result = run_check(check_class(), build(), seed=0)
        assert result.status == expected[name], f"{name}: {result.summary}"
        assert result.figures and result.findings
    assert (folder / "README.md").read_text() == case_readme(check_class)

    tests = load_module(f"scaffolded_test_{module}", root / "tests" / f"test_{module}.py", monkeypatch)
    ran = [name for name in dir(tests) if name.startswith("test_") and not skipped(getattr(tests, name))]
    for name in ran:
        getattr(tests, name)()
    assert len(ran) >= 2


def test_scaffolded_files_are_lint_clean(root):
    written = [str(path) for evidence in ("subject", "weights", "trace")
               for path in scaffold_check(f"lint-{evidence}", evidence, root) if path.suffix == ".py"]
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run([ruff, "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), *written],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]


def test_scaffold_refuses_to_overwrite(root):
    (root / "tests").mkdir()
    (root / "tests" / "test_weight_spikes.py").write_text("# mine\n")
    result = subprocess.run([sys.executable, "-m", "modeldoctor.engine.scaffold", "check", "weight-spikes", "--root", str(root)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "tests/test_weight_spikes.py" in result.stderr
    assert not (root / "modeldoctor" / "checks" / "weight_spikes.py").exists(), "nothing is written when one file exists"
    assert (root / "tests" / "test_weight_spikes.py").read_text() == "# mine\n"


def test_scaffold_refuses_a_taken_slug_and_a_bad_one(root, capsys):
    assert main(["check", "grad-norms", "--root", str(root)]) == 2
    assert "grad_norms.py" in capsys.readouterr().err
    assert main(["check", "Weight_Spikes", "--root", str(root)]) == 2
    assert re.search(r"lowercase words joined by hyphens", capsys.readouterr().err)
