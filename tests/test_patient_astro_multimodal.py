"""The astro-multimodal patient (seed 000) end to end through the real CLI.

These train real (tiny) models: a couple of minutes in all on 2 cores.
"""
import json
from functools import partial

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow
cli = partial(run_cli, timeout=600)


def results(path):
    return {row["check"]: row for row in json.loads(path.read_text())["results"]}


def test_failing_sample_has_a_collapsed_codec_and_a_trivial_head(trained_sample, tmp_path):
    done = cli("diagnose", trained_sample("astro-multimodal", "failing"), "--json", tmp_path / "r.json", "--html", tmp_path / "r.html")
    assert done.returncode == 1, done.stdout + done.stderr
    found = results(tmp_path / "r.json")
    codec = found["codec-roundtrip"]
    assert codec["status"] == "fail"
    assert "'spectrum' uses" in codec["summary"] or "'image' uses" in codec["summary"], codec["summary"]
    assert min(codec["metrics"]["image.usage"], codec["metrics"]["spectrum.usage"]) < 0.10
    heads = found["mean-collapse"]
    assert heads["status"] == "fail"
    metrics = heads["metrics"]
    assert metrics["redshift.mae_ratio"] >= 0.9 or metrics["spectrum.correlation"] < 0.2, metrics
    assert "codebook-reset" in codec["fixes"]
    html = (tmp_path / "r.html").read_text()
    assert "codec-roundtrip" in html and html.count("<svg") >= 4  # reconstructions and code-usage plots


def test_healthy_twin_passes(trained_sample, tmp_path):
    done = cli("diagnose", trained_sample("astro-multimodal", "healthy"), "--json", tmp_path / "r.json")
    assert done.returncode == 0, done.stdout + done.stderr
    statuses = {check: row["status"] for check, row in results(tmp_path / "r.json").items()}
    assert "fail" not in statuses.values() and "error" not in statuses.values(), statuses


def test_bench_of_codebook_reset_cuts_redshift_mae_by_at_least_30_percent(trained_sample, tmp_path):
    done = cli("bench", trained_sample("astro-multimodal", "failing"), "--fix", "codebook-reset", "--seeds", 3,
               "--json", tmp_path / "b.json")
    assert done.returncode == 0, done.stderr
    bench = json.loads((tmp_path / "b.json").read_text())
    assert bench["metric"] == "mae" and bench["higher_is_better"] is False
    baseline, patched = bench["arms"]
    assert patched["mean"] <= 0.7 * baseline["mean"], bench["arms"]
    assert bench["comparisons"][0]["ci95"][1] < 0, bench["comparisons"]
