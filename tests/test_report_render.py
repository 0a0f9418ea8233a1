"""Renderers on hand-made report and bench dicts: safe, self-contained, never crashing."""
from __future__ import annotations

import copy
import re

import pytest
from rich.console import Console

from modeldoctor.report import figure_svg, print_bench, print_report, render_html
from modeldoctor.report.html import curves_figure, doc_blocks

XSS = "<script>alert(1)</script>"

CHECK_DOC = """Predictions collapse to the mean of the targets.

What it checks
Compares the PSNR of the model with the PSNR of predicting the train mean.

Why it matters
A model at the mean baseline has learned `nothing` about the input.

Evidence
- psnr_db and mean_baseline_psnr_db
- a picture of prediction vs target

Options
    margin_db: 1.0   # how far above the mean baseline counts as learning
"""

FIX_DOC = """Sample new query coordinates every step instead of a fixed subset.

What it changes
The training data loader.
"""


def finding(status: str, kind: str, message: str, *, metrics=(), fixes=(), advice=()) -> dict:
    return {"status": status, "kind": kind, "message": message, "metrics": list(metrics), "fixes": list(fixes),
            "advice": list(advice)}


def sample_report() -> dict:
    """A report with every status, every figure kind and some awkward strings."""
    figures = [
        {"kind": "line", "title": "Loss $x$", "series": [
            {"name": "train", "x": [0, 1, 2, 3], "y": [1.0, None, 0.4, 0.3]},
            {"name": "eval", "x": [0, 1, 2, 3], "y": [1.1, 0.9, 0.8, None]}],
         "xlabel": "step", "ylabel": "loss", "logy": True,
         "hlines": [{"y": 0.5, "label": "mean baseline"}, {"y": None, "label": "missing"}]},
        {"kind": "images", "title": "target vs prediction", "vmin": 0, "vmax": 1, "images": [
            {"label": "target", "pixels": [[0.0, 1.0], [1.0, None]]},
            {"label": "prediction", "pixels": [[0.5, 0.5], [0.5, 0.5]]}]},
    ]
    return {
        "schema": "modeldoctor.report/2", "tool_version": "0.1.0", "created": "2024-01-01T00:00:00",
        "subject": {"name": f"sparse-field {XSS}", "checkpoint": "/tmp/sparse field.pt",
                    "sha256": "ab" * 32, "config": {"note": XSS, "lr": 1e-3, "steps": 400},
                    "description": "fixed 51 query pixels", "fixes_applied": []},
        "evidence": ["subject", "weights"], "figures": True,
        "status": "error",
        "counts": {"pass": 1, "warn": 1, "fail": 1, "skip": 1, "error": 1},
        "results": [
            {"check": "mean-collapse", "code": "MD101", "status": "fail", "evidence": "subject",
             "summary": "PSNR 6.1 dB equals the <b>mean</b> baseline [red]x[/red] (+1 more)",
             "findings": [
                 finding("fail", "collapse", "PSNR 6.1 dB equals the <b>mean</b> baseline [red]x[/red]",
                         metrics=["psnr_db", "mean_baseline_psnr_db"], fixes=["random-queries", "clamp-output"]),
                 finding("warn", "flat", f"predictions barely vary {XSS}", metrics=["per_seed"],
                         advice=["a note <i>"]),
             ],
             "metrics": {"psnr_db": 6.123456, "mean_baseline_psnr_db": 6.0, "ratio": None,
                         "per_seed": [1.23456, 2.0], "n": 1024},
             "fixes": ["random-queries", "clamp-output"], "duration_s": 1.234,
             "options": {"margin_db": 1.0}, "figures": figures, "notes": ["a note <i>"],
             "error": None},
            {"check": "query-coverage", "code": "MD102", "status": "warn", "evidence": "subject",
             "summary": "only 5% of query space seen", "metrics": {"coverage": 0.0498},
             "findings": [finding("warn", "coverage", "only 5% of query space seen", metrics=["coverage"],
                                  fixes=["random-queries"])],
             "fixes": ["random-queries"], "duration_s": 0.02, "options": {},
             "figures": [{"kind": "heatmap", "title": "queries seen", "matrix": [[1, 0], [None, 2]],
                          "colorbar": "count", "xticklabels": ["a", "b"], "yticklabels": ["c", "d"]}],
             "notes": [], "error": None},
            {"check": "expert-balance", "code": "MD103", "status": "pass", "evidence": "subject",
             "summary": "balanced", "findings": [finding("pass", "healthy", "balanced")],
             "metrics": {}, "fixes": [], "duration_s": 0.1, "options": {},
             "figures": [{"kind": "bar", "title": "load", "labels": ["e0", "e1", "e2"],
                          "values": [0.3, None, 0.4], "hlines": [{"y": 0.33, "label": "uniform"}],
                          "ylabel": "fraction"}],
             "notes": [], "error": None},
            {"check": "codec-roundtrip", "code": "MD104", "status": "skip", "evidence": "subject",
             "summary": "subject has no codec", "findings": [], "metrics": {}, "fixes": [], "duration_s": 0.0,
             "options": {}, "figures": [{"kind": "pie", "title": "unknown kind"}], "notes": [],
             "error": None},
            {"check": "grad-norms", "code": "MD105", "status": "error", "evidence": "subject",
             "summary": "check crashed", "findings": [], "metrics": {}, "fixes": [], "duration_s": 0.5, "options": {},
             "figures": [], "notes": [], "error": f"Traceback: ValueError {XSS}"},
        ],
    }


def sample_bench() -> dict:
    return {
        "schema": "modeldoctor.bench/1", "metric": "psnr_db", "higher_is_better": True,
        "subject": {"name": "sparse-field", "checkpoint": "x.pt", "sha256": "cd" * 32},
        "budget": {"steps": 400, "seeds": [0, 1, 2]},
        "arms": [
            {"name": "baseline", "fixes": [], "values": [6.1, 6.0, 6.2], "mean": 6.1, "std": 0.1},
            {"name": "patched", "fixes": ["random-queries"], "values": [23.6, 24.0, 24.4],
             "mean": 24.0, "std": 0.4},
            {"name": "noop [red]x[/red]", "fixes": ["clamp-output"], "values": [6.0, 6.3, 6.1],
             "mean": 6.13, "std": 0.15},
        ],
        "comparisons": [
            {"arm": "patched", "baseline": "baseline", "delta": 17.9, "ci95": [17.2, 18.6],
             "values": [17.5, 18.0, 18.2]},
            {"arm": "noop [red]x[/red]", "baseline": "baseline", "delta": 0.03, "ci95": [-0.2, 0.3],
             "values": [-0.1, 0.3, -0.1]},
        ],
        "trivial": {"name": "mean predictor", "value": 10.2},
        "curves": {
            "baseline": {"steps": [0, 100, 200, 300], "loss": [[1.0, 0.8, 0.7, 0.7],
                                                               [1.1, 0.9, None, 0.7],
                                                               [1.0, 0.8, 0.7, 0.6]]},
            "patched": {"steps": [0, 100, 200, 300], "loss": [[1.0, 0.3, 0.1, 0.05],
                                                              [1.0, 0.3, 0.1, 0.04],
                                                              [1.0, 0.35, 0.1, 0.05]]},
        },
    }


DOCS = {"mean-collapse": CHECK_DOC, "random-queries": FIX_DOC}


def external_refs(html: str) -> list[str]:
    """src=/href=/url() pointing off the page."""
    return re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import""",
                      html, flags=re.I)


@pytest.fixture(scope="module")
def page() -> str:
    return render_html(sample_report(), sample_bench(), docs=DOCS)


def test_page_is_self_contained(page: str) -> None:
    assert page.lstrip().startswith("<!DOCTYPE html>")
    assert "<svg" in page
    assert external_refs(page) == []
    # The only URLs left are XML namespace names, which are never fetched.
    without_namespaces = re.sub(r'xmlns(?::\w+)?="[^"]*"', "", page)
    assert "http://" not in without_namespaces and "https://" not in without_namespaces


def test_user_strings_are_escaped(page: str) -> None:
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "the &lt;b&gt;mean&lt;/b&gt; baseline" in page
    assert "<b>mean</b>" not in page
    assert "a note &lt;i&gt;" in page


def test_header_and_cards(page: str) -> None:
    assert 'title="' + "ab" * 32 + '"' in page
    assert "abababababab…" in page
    assert "<details><summary>Configuration</summary>" in page
    for slug in ("mean-collapse", "query-coverage", "expert-balance", "codec-roundtrip", "grad-norms"):
        assert f'id="check-{slug}"' in page
    for status in ("pass", "warn", "fail", "skip", "error"):
        assert f'class="badge {status} ' in page
    assert "6.123" in page and "6.123456" not in page  # 4 significant digits
    assert '<pre class="error">Traceback: ValueError &lt;script&gt;' in page
    assert "<h4>What it checks</h4>" in page and "<h4>Options</h4>" in page
    assert "<code>nothing</code>" in page
    assert "Sample new query coordinates every step" in page
    assert "cannot be drawn" in page  # the unknown figure kind


def test_bench_section(page: str) -> None:
    assert 'id="bench"' in page
    assert "+17.9" in page and "[+17.2, +18.6]" in page
    assert "better: interval excludes 0" in page
    assert "interval includes 0: inconclusive" in page
    assert "mean predictor" in page and "10.2" in page
    assert "24 ± 0.4" in page


def test_report_or_bench_alone() -> None:
    only_report = render_html(sample_report())
    assert 'id="bench"' not in only_report and 'id="checks"' in only_report
    only_bench = render_html(bench=sample_bench())
    assert 'id="checks"' not in only_bench and "+17.9" in only_bench
    assert "<h1>sparse-field</h1>" in only_bench
    assert "No checks ran." in render_html({"results": []})


@pytest.mark.parametrize("figure", [f for r in sample_report()["results"] for f in r["figures"]]
                         + [curves_figure(sample_bench()["curves"])],
                         ids=lambda f: f["kind"])
def test_every_figure_kind_renders(figure: dict) -> None:
    svg = figure_svg(figure)
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<?xml" not in svg and "DOCTYPE" not in svg
    assert svg == figure_svg(copy.deepcopy(figure))  # deterministic


@pytest.mark.parametrize("figure", [
    {"kind": "line", "series": [{"name": "all none", "y": [None, None]}], "logy": True},
    {"kind": "line", "series": []},
    {"kind": "bar", "labels": [], "values": []},
    {"kind": "images", "images": [{"label": "x", "pixels": [[None]]}]},
    {"kind": "images", "images": []},
    {"kind": "heatmap", "matrix": [[1, 2], [3]]},
    {"kind": "heatmap", "matrix": [[None, None]], "title": "$\\frac{1}{0}$ <b>"},
    {"kind": None},
    "not a dict",
])
def test_awkward_figures_never_raise(figure) -> None:
    svg = figure_svg(figure)  # type: ignore[arg-type]
    assert svg.startswith("<svg")
    assert "<b>" not in svg


def test_curves_average_seeds_per_step_ignoring_missing_values() -> None:
    by_seed = curves_figure({"a": {"steps": [0, 1], "loss": [[2.0, 1.0], [4.0, None], [3.0, 2.0]]}})
    assert by_seed["series"][0]["y"] == [3.0, 1.5]


def test_doc_blocks() -> None:
    blocks = doc_blocks(CHECK_DOC)
    assert [b["text"] for b in blocks if b["type"] == "heading"] == \
        ["What it checks", "Why it matters", "Evidence", "Options"]
    assert {b["type"] for b in blocks} == {"heading", "para", "list", "pre"}
    assert doc_blocks(None) == []


def test_terminal_report_and_bench() -> None:
    console = Console(record=True, width=120)
    print_report(sample_report(), console)
    print_bench(sample_bench(), console)
    out = console.export_text()
    for name in ("mean-collapse", "query-coverage", "expert-balance", "codec-roundtrip", "grad-norms"):
        assert name in out
    for status in ("pass", "warn", "fail", "skip", "error"):
        assert status in out
    assert "[red]x[/red]" in out  # shown literally, not parsed as markup
    assert "--apply random-queries,clamp-output --out patched.pt" in out
    assert "+17.9" in out and "better: interval excludes 0" in out
    assert "mean predictor" in out


def test_terminal_minimal_report() -> None:
    console = Console(record=True, width=80)
    print_report({"results": []}, console)
    print_bench({"arms": []}, console)
    assert "no checks ran" in console.export_text()


def test_table_figure_renders_as_an_escaped_html_table() -> None:
    report = sample_report()
    report["results"][0]["figures"].append(
        {"kind": "table", "title": f"ranked {XSS}", "columns": ["module", f"norm {XSS}"],
         "rows": [[f"enc.{XSS}", 1.234567], ["head", None], "not a row"]})
    page = render_html(report)
    table = page[page.index("<table><caption>ranked"):]
    table = table[: table.index("</table>")]
    assert "<script>" not in table and "&lt;script&gt;" in table
    assert "<th>module</th>" in table and '<td class="num">1.235</td>' in table
    assert "<td>—</td>" in table and table.count("<tr>") == 3  # header + two rows
    assert "figure kind 'table' cannot be drawn" not in page


# --- schema modeldoctor.report/2: findings, evidence kinds, figures on demand -------------------

def card(page: str, slug: str) -> str:
    start = page.index(f'id="check-{slug}"')
    return page[start: page.index("</article>", start)]


def test_findings_are_listed_under_the_summary_and_escaped(page: str) -> None:
    two = card(page, "mean-collapse")
    findings = two[two.index('<ul class="findings">'):]
    findings = findings[: findings.index("</ul>")]
    assert findings.count("<li>") == 2
    assert 'class="badge fail ' in findings and 'class="badge warn ' in findings
    assert f"predictions barely vary {XSS}" not in page
    assert "predictions barely vary &lt;script&gt;alert(1)&lt;/script&gt;" in findings
    assert "the &lt;b&gt;mean&lt;/b&gt; baseline" in findings and "<b>mean</b>" not in findings
    assert "psnr_db, mean_baseline_psnr_db" in findings and '<span class="chip">clamp-output</span>' in findings
    # One finding with details is listed; a lone bare pass is the summary already.
    assert '<ul class="findings">' in card(page, "query-coverage")
    assert '<ul class="findings">' not in card(page, "expert-balance")
    assert "needs subject" in card(page, "grad-norms")


def test_evidence_kinds_and_unbuilt_figures_are_said() -> None:
    page = render_html(sample_report())
    facts = page[page.index("<dt>evidence</dt>"):]
    assert facts.index('<span class="chip">subject</span>') < facts.index('<span class="chip">weights</span>') < facts.index("</dd>")
    assert "Figures were not built" not in page
    report = sample_report()
    report["figures"] = False
    for result in report["results"]:
        result["figures"] = []
    assert "Figures were not built for this run" in render_html(report)
    legacy = sample_report()
    del legacy["figures"], legacy["evidence"]  # a report/1 says nothing about either
    assert "Figures were not built" not in render_html(legacy) and "<dt>evidence</dt>" not in render_html(legacy)


def test_terminal_says_which_checks_lacked_their_evidence() -> None:
    def skipped(check: str, kind: str) -> dict:
        return {"check": check, "status": "skip", "evidence": kind, "summary": "skipped", "fixes": []}

    report = {"evidence": ["subject"], "results": [
        {"check": "mean-collapse", "status": "pass", "evidence": "subject", "summary": "ok", "fixes": []},
        skipped("codec-roundtrip", "subject"),  # skipped for its own reason, not for missing evidence
        skipped("loss-spikes", "trace"), skipped("lr-schedule", "trace"), skipped("train-mode", "trace"),
        skipped("optimizer-state", "weights"),
    ]}
    console = Console(record=True, width=200)
    print_report(report, console)
    out = console.export_text()
    assert "3 checks skipped: they need a recorded training run" in out
    assert "1 check skipped: it needs the weights of a checkpoint" in out
    assert out.count("skipped:") == 2

    console = Console(record=True, width=200)
    print_report(sample_report(), console)  # its one skip had its evidence
    assert "skipped:" not in console.export_text()
