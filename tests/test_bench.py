"""Bench mechanics: same seeds give the same numbers in-process and in worker processes; paired deltas."""
import pytest

from modeldoctor.engine.bench import Arm, run_bench

SMALL = {"n_train_fields": 64, "n_eval_fields": 16}


@pytest.fixture(scope="module")
def in_process():
    return run_bench("sparse-field", SMALL, [Arm("baseline", []), Arm("patched", ["random-queries"])], seeds=[0, 1], steps=5, jobs=1)


def test_bench_schema_and_paired_comparison(in_process):
    bench = in_process
    assert bench["schema"] == "modeldoctor.bench/1" and bench["metric"] == "psnr_db"
    assert bench["budget"] == {"steps": 5, "seeds": [0, 1]}
    baseline, patched = bench["arms"]
    comparison = bench["comparisons"][0]
    deltas = [p - b for p, b in zip(patched["values"], baseline["values"])]
    assert comparison["values"] == pytest.approx(deltas, abs=1e-4)  # JSON keeps 6 significant digits
    assert comparison["ci95"][0] <= comparison["delta"] <= comparison["ci95"][1]
    assert bench["trivial"]["name"] == "mean predictor"
    assert len(bench["curves"]["patched"]["loss"]) == 2


def test_worker_processes_reproduce_the_in_process_numbers(in_process):
    parallel = run_bench("sparse-field", SMALL, [Arm("baseline", []), Arm("patched", ["random-queries"])], seeds=[0, 1], steps=5, jobs=2)
    assert [arm["values"] for arm in parallel["arms"]] == [arm["values"] for arm in in_process["arms"]]
