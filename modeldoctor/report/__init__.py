"""Renderers: report and bench dicts to HTML, terminal tables and SVG figures.

Renderers never touch tensors; they take the plain data of `modeldoctor.results`.
"""
from __future__ import annotations

from .docs import docs_for
from .figures import figure_svg
from .html import render_html
from .terminal import print_bench, print_report

__all__ = ["render_html", "render_page", "print_report", "print_bench", "figure_svg"]


def render_page(report: dict | None = None, bench: dict | None = None) -> str:
    """The HTML page of a report and/or a bench, with the docs of the checks and fixes they name."""
    return render_html(report=report, bench=bench, docs=docs_for(report, bench))
