"""The documentation a report needs: the docstrings of the checks and fixes it mentions."""
from __future__ import annotations

from ..core.registry import CHECKS, FIXES, load_plugins


def docs_for(report: dict | None, bench: dict | None = None) -> dict[str, str]:
    """slug -> docstring for every check in `report` and every fix it prescribes or `bench` tried."""
    load_plugins()
    slugs = set()
    for result in (report or {}).get("results", []):
        slugs.add(result["check"])
        slugs.update(result.get("fixes", []))
    for arm in (bench or {}).get("arms", []):
        slugs.update(arm.get("fixes", []))
    table = {**CHECKS, **FIXES}
    return {slug: table[slug].doc() for slug in sorted(slugs) if slug in table}
