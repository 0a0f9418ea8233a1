"""Cases for query-coverage: training that never queries what evaluation asks, and training that does.

The check runs no model, so these subjects are untrained.
"""
import torch
from torch import nn

from modeldoctor import QuerySpace, Subject, TensorBatches, build_subject

SMALL = {"n_train_fields": 256, "n_eval_fields": 16}


def case_sparse_field_fixed_queries():
    """The seed: training always queries pixels 0, 5, ..., 250; evaluation queries all 1024."""
    return build_subject("sparse-field", {**SMALL, "train_queries": "fixed"})


def case_sparse_field_random_queries():
    return build_subject("sparse-field", {**SMALL, "train_queries": "random"})


def continuous(train_high: float) -> Subject:
    """Continuous 2-D queries: training draws them from [0, train_high]², evaluation from [0, 1]²."""
    generator = torch.Generator().manual_seed(0)
    train_x = torch.rand(2048, 2, generator=generator) * train_high  # (N, 2) query coordinates
    eval_x = torch.rand(512, 2, generator=generator)
    target = lambda x: (x.sum(-1, keepdim=True) / 2)  # noqa: E731
    model = nn.Linear(2, 1)
    return Subject(
        name="continuous-queries",
        model=model,
        train_batches=TensorBatches(train_x, target(train_x), 64),
        eval_batches=TensorBatches(eval_x, target(eval_x), 64, shuffle=False),
        loss=lambda m, b: torch.mean((m(b[0]) - b[1]) ** 2),
        predict=lambda m, b: (m(b[0]), b[1]),
        queries=QuerySpace(coords=lambda batch: batch[0], space=eval_x),
    )


def case_continuous_half_domain():
    return continuous(0.5)


def case_continuous_same_domain():
    return continuous(1.0)
