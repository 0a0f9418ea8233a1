"""The crossmodal-retrieval patient (seed 002) end to end through the real CLI.

These train real (tiny) models: about half a minute in all on 2 cores.
"""
import json
from functools import partial

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow
cli = partial(run_cli, timeout=600)


def results(path):
    return {row["check"]: row for row in json.loads(path.read_text())["results"]}


def test_failing_sample_retrieves_audio_at_chance_and_names_the_frozen_tower(trained_sample, tmp_path):
    done = cli("diagnose", trained_sample("crossmodal-retrieval", "failing"), "--checks", "retrieval,grad-norms",
               "--json", tmp_path / "r.json", "--html", tmp_path / "r.html")
    assert done.returncode == 1, done.stdout + done.stderr
    found = results(tmp_path / "r.json")
    retrieval, grad = found["retrieval"], found["grad-norms"]
    assert retrieval["status"] == "fail" and retrieval["metrics"]["untrained_modalities"] == ["audio"]
    m = retrieval["metrics"]
    assert m["audio->image.recall@10"] <= 2 * m["chance.recall@10"] and m["image->text.recall@1"] > 0.2
    assert "tower 'audio' looks untrained" in retrieval["summary"]
    assert {"lora-all-towers", "learnable-temperature"} <= set(retrieval["fixes"])
    assert grad["status"] == "fail" and grad["metrics"]["frozen_groups"] == ["audio"]
    assert "declared group 'audio' is frozen" in grad["summary"]
    html = (tmp_path / "r.html").read_text()
    assert "R@1 per direction" in html and "Gradient norm per parameter group" in html


def test_healthy_twin_passes(trained_sample, tmp_path):
    done = cli("diagnose", trained_sample("crossmodal-retrieval", "healthy"), "--json", tmp_path / "r.json")
    assert done.returncode == 0, done.stdout + done.stderr
    found = results(tmp_path / "r.json")
    assert found["retrieval"]["status"] == "pass" and found["grad-norms"]["status"] == "pass", found["grad-norms"]["summary"]
    assert not {row["status"] for row in found.values()} & {"fail", "error"}
    assert found["retrieval"]["metrics"]["mean_recall@1"] > 0.4


def test_bench_of_the_prescribed_fixes_raises_recall(trained_sample, tmp_path):
    done = cli("bench", trained_sample("crossmodal-retrieval", "failing"), "--fix", "lora-all-towers,learnable-temperature",
               "--seeds", 3, "--jobs", 2, "--json", tmp_path / "b.json")
    assert done.returncode == 0, done.stderr
    bench = json.loads((tmp_path / "b.json").read_text())
    assert bench["metric"] == "recall@1" and bench["higher_is_better"] is True
    comparison = bench["comparisons"][0]
    assert comparison["delta"] > 0.1 and comparison["ci95"][0] > 0, bench["arms"]
