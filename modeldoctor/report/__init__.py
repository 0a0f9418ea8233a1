"""Renderers: report and bench dicts to HTML, terminal tables and SVG figures.

Renderers never touch tensors; they take the plain data of `modeldoctor.results`.
"""
from __future__ import annotations

from .figures import figure_svg
from .html import render_html
from .terminal import print_bench, print_report

__all__ = ["render_html", "print_report", "print_bench", "figure_svg"]
