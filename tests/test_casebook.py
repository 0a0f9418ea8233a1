"""Every case in the case book gets the status its expected.json promises; READMEs are generated."""
from pathlib import Path

import pytest

from modeldoctor.core.registry import CHECKS, get_check, load_plugins
from modeldoctor.engine.casebook import case_options, case_readme, load_cases
from modeldoctor.engine.runner import run_check

ROOT = Path(__file__).resolve().parents[1] / "checks"
load_plugins()


def all_cases():
    for folder in sorted(p for p in ROOT.iterdir() if p.is_dir()):
        builders, expected = load_cases(folder)
        assert set(builders) == set(expected), f"{folder.name}: cases.py and expected.json disagree"
        for name in sorted(builders):
            yield pytest.param(folder.name, builders[name], expected[name], id=f"{folder.name}:{name}")


@pytest.mark.parametrize(("slug", "build", "status"), list(all_cases()))
def test_case_gets_expected_status(slug, build, status):
    result = run_check(get_check(slug)(**case_options(ROOT / slug)), build(), seed=0)
    assert result.status == status, result.summary


# Checks whose worst finding is a warning by design (evidence, never a verdict): their trigger is a `warn` case.
WARN_ONLY = {"spectral-shape"}


def test_every_check_has_a_casebook_folder_with_a_trigger_and_a_healthy_case():
    for slug in CHECKS:
        folder = ROOT / slug
        assert folder.is_dir(), f"no case-book folder for {slug}"
        _, expected = load_cases(folder)
        trigger = "warn" if slug in WARN_ONLY else "fail"
        assert trigger in expected.values() and "pass" in expected.values(), slug


@pytest.mark.parametrize("slug", sorted(CHECKS))
def test_casebook_readme_is_generated_from_docstring(slug):
    assert (ROOT / slug / "README.md").read_text() == case_readme(CHECKS[slug]), "run `python -m modeldoctor.engine.casebook`"


@pytest.mark.parametrize("slug", sorted(CHECKS))
def test_check_docstring_has_the_fixed_headings(slug):
    from modeldoctor.core.check import DOC_HEADINGS

    lines = CHECKS[slug].doc().splitlines()
    for heading in DOC_HEADINGS:
        assert heading in lines, f"{slug} docstring lacks '{heading}'"
