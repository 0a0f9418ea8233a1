"""The layers import only downwards (import-linter contracts in pyproject.toml), and the core stays a contract layer."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("cli", "report", "engine", "checks", "fixes", "samples", "probes", "nn", "core")


def test_import_linter_contracts_are_kept():
    command = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    result = subprocess.run([command, "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_every_module_lives_in_a_layer():
    """Nothing but the flat API and the entry point sits at the top of the package."""
    top = sorted(p.name for p in (REPO_ROOT / "modeldoctor").iterdir() if not p.name.startswith(("_", ".")) or p.suffix)
    loose = [name for name in top if name.endswith(".py") and name not in ("__init__.py", "__main__.py")]
    assert loose == [], f"modules outside a layer folder: {loose}"
    folders = {p.name for p in (REPO_ROOT / "modeldoctor").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= set(LAYERS), folders - set(LAYERS)
