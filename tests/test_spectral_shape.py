"""spectral-shape: the spectral kernels against known laws and hand values, truncation, judge edges, opt-in skip."""
import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from modeldoctor import Weights, run_check
from modeldoctor.checks.spectral_shape import OFF, SpectralShape
from modeldoctor.core.results import Measurement, derive
from modeldoctor.engine.runner import run_battery
from modeldoctor.probes.spectra import as_matrix, esd, fit_power_law, power_law_alpha, power_law_cdf, singular_values, stable_rank


def pareto(alpha: float, n: int, xmin: float = 1.0, seed: int = 0) -> np.ndarray:
    """n draws of the continuous power law p(x) ∝ x^(−alpha) above xmin (inverse CDF)."""
    return xmin * (1.0 - np.random.default_rng(seed).random(n)) ** (-1.0 / (alpha - 1.0))


def with_spectrum(eigenvalues: np.ndarray, m: int, n: int, seed: int = 0) -> torch.Tensor:
    """A (m, n) matrix U diag(√λ) Vᵀ with random orthonormal U, V: its ESD is exactly `eigenvalues`."""
    g = torch.Generator().manual_seed(seed)
    k = len(eigenvalues)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g))  # (m, k)
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g))  # (n, k)
    return (u * torch.tensor(np.sqrt(eigenvalues), dtype=torch.float32)) @ v.T


# --- kernels ------------------------------------------------------------------------------------

def test_alpha_mle_hand_value_and_pareto_recovery():
    assert power_law_alpha(np.exp([0.0, 1.0, 2.0]), 1.0) == pytest.approx(1 + 3 / 3)  # 1 + n / Σ ln(x/xmin)
    for alpha in (1.5, 2.5, 4.0):
        x = pareto(alpha, 4000, xmin=2.0)
        assert power_law_alpha(x, 2.0) == pytest.approx(alpha, abs=4 * (alpha - 1) / math.sqrt(4000))
        fit = fit_power_law(x)
        assert fit.alpha == pytest.approx(alpha, abs=0.1) and fit.xmin == pytest.approx(2.0, rel=0.1)


def test_fit_finds_the_tail_above_a_bulk_and_its_ks_is_scipys():
    bulk = np.random.default_rng(1).lognormal(0.0, 0.3, 1000)  # (1000,) around 1
    x = np.concatenate([bulk, pareto(2.5, 300, xmin=3.0, seed=2)])
    fit = fit_power_law(x)
    assert fit.alpha == pytest.approx(2.5, abs=0.35) and fit.xmin >= 2.0 and 100 <= fit.n_tail <= 400
    tail = np.sort(x)[np.sort(x) >= fit.xmin]
    assert fit.ks == pytest.approx(scipy.stats.kstest(tail, lambda v: power_law_cdf(v, fit.alpha, fit.xmin)).statistic)


def test_fit_needs_a_tail():
    assert fit_power_law(np.arange(1.0, 9.0)) is None  # fewer than MIN_TAIL values
    assert fit_power_law(np.ones(50)) is None  # no spread: no finite alpha
    assert fit_power_law(np.zeros(50)) is None


def test_esd_stable_rank_and_matrix_hand_values():
    w = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    values, truncated = singular_values(w)
    assert not truncated and esd(values).tolist() == pytest.approx([9.0, 16.0])
    assert stable_rank(25.0, float(values[0])) == pytest.approx(25 / 16)
    a = torch.randn(20, 7, generator=torch.Generator().manual_seed(0))
    assert esd(singular_values(a)[0]) == pytest.approx(np.linalg.eigvalsh((a.T @ a).double().numpy()), rel=1e-4)
    assert stable_rank(8.0, 1.0) == 8.0  # identity of size 8
    assert stable_rank(float(torch.outer(torch.arange(1.0, 5.0), torch.ones(3)).square().sum()),
                       float(torch.linalg.matrix_norm(torch.outer(torch.arange(1.0, 5.0), torch.ones(3)), 2))) == pytest.approx(1.0)
    assert math.isnan(stable_rank(0.0, 0.0))
    assert as_matrix(torch.zeros(8, 4, 3, 3)).shape == (8, 36)


def test_truncated_top_values_agree_with_the_full_spectrum_on_the_tail():
    """A Pareto ESD is the hard case for a randomized SVD (slowly decaying σ): the top is exact, the fit close."""
    w = with_spectrum(pareto(2.5, 600, seed=3), 700, 600)  # (700, 600), heavy-tailed ESD
    full = singular_values(w, full_max=1024)[0]
    torch.manual_seed(0)
    cut, truncated = singular_values(w, full_max=256, top=256)
    assert truncated and len(cut) == 256
    assert cut[:100] == pytest.approx(full[:100], rel=2e-3)  # the top of the spectrum, where the tail is
    full_fit, cut_fit = fit_power_law(esd(full)), fit_power_law(esd(cut))
    assert full_fit.alpha == pytest.approx(2.5, abs=0.3)
    assert cut_fit.alpha == pytest.approx(full_fit.alpha, abs=3 * (full_fit.alpha - 1) / math.sqrt(cut_fit.n_tail))


# --- the check ------------------------------------------------------------------------------------

def weights(**tensors) -> Weights:
    return Weights.from_state_dict({f"{name}.weight": t for name, t in tensors.items()})


def test_disabled_by_default_is_a_skip_with_the_way_to_turn_it_on():
    w = weights(fc=torch.randn(64, 64))
    result = run_check(SpectralShape(), w)
    assert result.status == "skip" and OFF in result.summary and "--spectral" in result.summary
    [battery] = run_battery(w, [SpectralShape])
    assert battery.status == "skip"
    [enabled] = run_battery(w, [SpectralShape], options={"spectral-shape": {"enabled": True}})
    assert enabled.status == "pass"


def test_skips_without_a_sizable_matrix_and_reports_small_and_nonfinite_ones():
    assert "no linear or conv weight" in run_check(SpectralShape(enabled=True), weights(fc=torch.randn(16, 64))).summary
    bad = torch.randn(64, 64)
    bad[0, 0] = math.nan
    result = run_check(SpectralShape(enabled=True), weights(a=torch.randn(64, 64), b=bad, c=torch.randn(8, 64)))
    assert result.status == "pass" and result.metrics["num_layers"] == 1
    assert result.metrics["num_nonfinite"] == 1 and result.metrics["num_small"] == 1


def test_planted_rank_one_warns_and_names_the_layer():
    g = torch.Generator().manual_seed(0)
    rank_one = torch.outer(torch.randn(128, generator=g), torch.randn(96, generator=g)) + 1e-4 * torch.randn(128, 96, generator=g)
    result = run_check(SpectralShape(enabled=True), weights(good=torch.randn(96, 128, generator=g), collapsed=rank_one))
    assert result.status == "warn" and result.findings[0].kind == "rank-collapse"
    assert result.findings[0].where == ("collapsed.weight",)
    row = {r["name"]: r for r in result.metrics["layers"]}["collapsed.weight"]
    assert row["stable_rank"] == pytest.approx(1.0, abs=1e-3) and row["shape"] == [128, 96]
    json.dumps(result.to_dict())  # metrics and figures are JSON-able
    assert [f["kind"] for f in result.figures] == ["bar", "bar", "line"]


def test_heavy_tail_is_judged_only_when_asked():
    w = weights(heavy=with_spectrum(pareto(1.3, 256, seed=4), 256, 256))  # (its largest λ also dominates: rank-collapse)
    default = run_check(SpectralShape(enabled=True), w)
    assert "heavy-tail" not in {finding.kind for finding in default.findings}  # default: alpha is a note, not a verdict
    assert any("over-trained reading" in note for note in default.notes)
    result = run_check(SpectralShape(enabled=True, warn_alpha=1.5), w)
    heavy = next(finding for finding in result.findings if finding.kind == "heavy-tail")
    assert heavy.status == "warn" and heavy.where == ("heavy.weight",)


def test_conv_weights_are_matrices_and_large_ones_are_truncated():
    conv = torch.randn(64, 16, 3, 3)  # (out, in, k, k) -> (64, 144)
    result = run_check(SpectralShape(enabled=True, full_svd_max=50, top_q=16), weights(conv=conv, fc=torch.randn(48, 48)))
    rows = {r["name"]: r for r in result.metrics["layers"]}
    assert rows["conv.weight"]["truncated"] and rows["conv.weight"]["n_eigs"] == 16 and rows["conv.weight"]["shape"] == [64, 16, 3, 3]
    assert not rows["fc.weight"]["truncated"] and rows["fc.weight"]["n_eigs"] == 48
    assert result.metrics["truncated_layers"] == ["conv.weight"] and result.metrics["num_truncated"] == 1
    assert rows["conv.weight"]["stable_rank"] == pytest.approx(
        float(conv.square().sum() / torch.linalg.matrix_norm(conv.reshape(64, -1), 2) ** 2), rel=1e-3)
    assert result.metrics["seconds_per_layer"] > 0


def test_layer_list_is_bounded_to_the_worst():
    g = torch.Generator().manual_seed(0)
    tensors = {f"l{i}": torch.randn(64, 64, generator=g) for i in range(4)}
    tensors["l2"] = torch.outer(torch.randn(64, generator=g), torch.randn(64, generator=g))
    result = run_check(SpectralShape(enabled=True, max_layers=2), weights(**tensors))
    names = [r["name"] for r in result.metrics["layers"]]
    assert len(names) == 2 and "l2.weight" in names and result.metrics["num_layers"] == 4
    assert result.metrics["worst_layer"] == "l2.weight"


def row(name="fc.weight", alpha=3.0, stable=5.0):
    return {"name": name, "shape": [64, 64], "alpha": alpha, "ks": 0.05, "n_tail": 20, "stable_rank": stable,
            "n_eigs": 64, "truncated": False, "seconds": 0.001}


def judged(rows, **options):
    metrics = {"layers": rows, "num_layers": len(rows), "median_alpha": 3.0,
               "min_stable_rank": min(r["stable_rank"] for r in rows)}
    return SpectralShape(enabled=True, **options).judge(Measurement(metrics=metrics))


def test_judge_edges():
    assert derive(judged([row(stable=1.21)]))[0] == "pass"
    [finding] = judged([row(stable=1.19), row("b.weight", stable=1.3)])
    assert finding.status == "warn" and finding.where == ("fc.weight",)
    assert derive(judged([row(alpha=1.01)]))[0] == "pass"  # alpha is not judged by default
    assert derive(judged([row(alpha=1.51)], warn_alpha=1.5))[0] == "pass"
    assert derive(judged([row(alpha=1.49)], warn_alpha=1.5))[0] == "warn"
    assert derive(judged([row(alpha=None)], warn_alpha=1.5))[0] == "pass"  # no tail fitted
    statuses = {f.status for f in judged([row(alpha=1.01, stable=1.0)], warn_alpha=1.5)}
    assert statuses == {"warn"}  # never a fail


def test_healthy_adamw_mlp_with_low_alpha_passes():
    """AdamW with weight decay 0.3 gives a healthy MLP alpha near 1.2: why the default does not judge alpha."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = torch.sin(x[:, :3].sum(-1, keepdim=True)) + x[:, 3:4] * x[:, 4:5]
    model = nn.Sequential(nn.Linear(8, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(),
                          nn.Linear(128, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.3)
    for _ in range(1000):
        idx = torch.randint(0, 512, (64,), generator=g)
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.2
    result = run_check(SpectralShape(enabled=True), Weights.from_state_dict(model.state_dict()))
    assert result.status == "pass", result.summary
    assert min(r["alpha"] for r in result.metrics["layers"]) < 1.5  # WeightWatcher would call it over-trained
