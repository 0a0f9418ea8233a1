"""Numeric kernels against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from modeldoctor.probes.numerics import (
    expected_cell_coverage,
    expected_coverage,
    mse,
    paired_interval,
    pearson,
    psnr_db,
    variance_ratio,
)


def test_psnr_of_binary_targets_predicted_at_half_is_6_02_db():
    target = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert psnr_db(mse(torch.full_like(target, 0.5), target)) == pytest.approx(6.0206, abs=1e-3)


def test_psnr_respects_data_range_and_perfect_prediction():
    assert psnr_db(0.01, data_range=1.0) == pytest.approx(20.0)
    assert psnr_db(0.04, data_range=2.0) == pytest.approx(20.0)
    assert psnr_db(0.0) == math.inf


def test_variance_ratio_and_pearson():
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert variance_ratio(target * 0.5, target) == pytest.approx(0.25)
    assert pearson(-target, target) == pytest.approx(-1.0)
    assert math.isnan(pearson(torch.ones(4), target))


def test_expected_knn_coverage_matches_naeem_lemma():
    # N = M, k = 5 -> 1 - prod (N-i)/(2N-i) ~ 1 - 2^-5 for large N
    assert expected_coverage(10_000, 10_000, 5) == pytest.approx(1 - 2**-5, abs=1e-3)
    # N = 3, M = 1, k = 1: 1 - (2/3) = 1/3
    assert expected_coverage(3, 1, 1) == pytest.approx(1 / 3)


def test_expected_cell_coverage_by_hand():
    # Two equally likely cells, one draw: exactly one cell is covered -> half the mass.
    assert expected_cell_coverage(np.array([0.5, 0.5]), 1) == pytest.approx(0.5)
    # Two draws: P(cell missed) = 0.25 -> covered mass 0.75.
    assert expected_cell_coverage(np.array([0.5, 0.5]), 2) == pytest.approx(0.75)


def test_paired_interval_by_hand():
    low, high = paired_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, sem 1/sqrt(3), t(0.975, 2) = 4.3027
    half = 4.302653 / math.sqrt(3)
    assert (low, high) == pytest.approx((2 - half, 2 + half), abs=1e-4)
    assert all(math.isnan(v) for v in paired_interval([1.0]))


def test_label_entropy_by_hand():
    from modeldoctor.probes.numerics import label_entropy

    assert label_entropy(torch.tensor([0, 1, 0, 1]), 3) == pytest.approx(math.log(2))
    assert label_entropy(torch.tensor([2, 2, 2]), 3) == pytest.approx(0.0)


def test_mean_row_correlation_by_hand():
    from modeldoctor.probes.numerics import mean_row_correlation

    target = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    prediction = torch.tensor([[2.0, 4.0, 6.0], [1.0, 2.0, 3.0]])  # rows: +1 and -1 correlated
    assert mean_row_correlation(prediction, target) == pytest.approx(0.0)
    assert mean_row_correlation(target, target) == pytest.approx(1.0)


def test_trivial_scores_by_hand():
    from modeldoctor.probes.numerics import trivial_scores

    regression = trivial_scores("regression", torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0, 4.0]))
    # median of training targets = 2: MAE 1.0; the model's MAE is 0.5
    assert regression["mae"] == pytest.approx(0.5) and regression["median_mae"] == pytest.approx(1.0)
    assert regression["mae_ratio"] == pytest.approx(0.5)
    logits = torch.tensor([[5.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 1])
    categorical = trivial_scores("classification", logits, labels, torch.tensor([0, 0, 0, 1]), 2)
    assert categorical["accuracy"] == 1.0 and categorical["majority_accuracy"] == pytest.approx(2 / 3)
    assert categorical["prior_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
