"""weight-collapse: tables and routers found by name, distinct rows counted, routers simulated, judged at the edges."""
import math

import pytest
import torch

from modeldoctor import apply_fixes, build_subject, run_check
from modeldoctor.checks.weight_collapse import WeightCollapse
from modeldoctor.core.evidence import Evidence, Weights
from modeldoctor.core.results import Measurement, derive
from modeldoctor.probes.training import seed_everything, train
from modeldoctor.probes.weight_tables import (
    chance_clusters,
    find_gates,
    find_tables,
    near_duplicates,
    share_summary,
    simulate_routing,
)
from modeldoctor.samples import SAMPLES

D = 32


def experts(prefix: str, count: int, inner: str = "{i}") -> dict:
    return {f"{prefix}.{inner.format(i=i)}.w1.weight": torch.randn(16, D) for i in range(count)}


# --- what is a table, what is a router ----------------------------------------------------------

def test_routers_are_found_by_name_and_checked_against_their_experts():
    state = {
        "model.layers.0.block_sparse_moe.gate.weight": torch.randn(8, D),  # Mixtral
        **experts("model.layers.0.block_sparse_moe.experts", 8),
        "model.layers.1.mlp.gate.weight": torch.randn(6, D),  # Qwen2-MoE, with a shared expert and its gate
        "model.layers.1.mlp.shared_expert_gate.weight": torch.randn(1, D),
        "model.layers.1.mlp.shared_expert.gate_proj.weight": torch.randn(4, D),
        **{f"model.layers.1.mlp.experts.{i}.gate_proj.weight": torch.randn(4, D) for i in range(6)},
        "encoder.block.1.layer.1.mlp.router.classifier.weight": torch.randn(4, D),  # Switch
        **experts("encoder.block.1.layer.1.mlp.experts", 4, "expert_{i}"),
        "moe.gate.wg.weight": torch.randn(4, D),  # fairseq / DeepSpeed
        **experts("moe.experts.deepspeed_experts", 4),
        "shazeer.w_gate": torch.randn(D, 5),  # a raw (d, E) parameter
        "mixer.gate.weight": torch.randn(4, D),  # named like a gate, but next to 3 experts: not a router
        **experts("mixer.experts", 3),
    }
    gates = {g.name: (g.experts, g.transposed, g.siblings) for g in find_gates(Weights.from_state_dict(state))}
    assert gates == {
        "model.layers.0.block_sparse_moe.gate.weight": (8, False, 8),
        "model.layers.1.mlp.gate.weight": (6, False, 6),
        "encoder.block.1.layer.1.mlp.router.classifier.weight": (4, False, 4),
        "moe.gate.wg.weight": (4, False, 4),
        "shazeer.w_gate": (5, True, None),
    }


def test_gated_mlps_are_not_routers():
    state = {"layers.0.mlp.gate_proj.weight": torch.randn(16, D), "layers.0.mlp.up_proj.weight": torch.randn(16, D),
             "layers.0.mlp.gate_up_proj.weight": torch.randn(32, D), "layers.0.mlp.down_proj.weight": torch.randn(D, 16),
             "layers.0.ffn.gate.weight": torch.randn(4 * D, D)}  # an nn.Linear "gate" wider than its input: a GLU
    assert find_gates(Weights.from_state_dict(state)) == []


def test_tables_are_embeddings_and_table_named_tensors():
    state = {"embed_tokens.weight": torch.randn(64, D), "pos_embed": torch.randn(1, 12, D),
             "vq._codebook.embed": torch.randn(2, 16, 8), "vq._codebook.embed_avg": torch.randn(2, 16, 8),
             "quantizer.embedding.weight": torch.randn(32, 4), "head.weight": torch.randn(10, D)}
    tables = {t.label: (t.rows, t.dim, t.codebook) for t in find_tables(Weights.from_state_dict(state))}
    assert tables == {"embed_tokens.weight": (64, D, False), "quantizer.embedding.weight": (32, 4, True),
                      "pos_embed": (12, D, False), "vq._codebook.embed[0]": (16, 8, True), "vq._codebook.embed[1]": (16, 8, True)}


# --- kernels ------------------------------------------------------------------------------------

def test_near_duplicates_count_clusters_pairs_and_respect_norms():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(10, 16, generator=generator)
    copies = base.repeat_interleave(5, 0) * (1 + 1e-4 * torch.randn(50, 16, generator=generator))  # 10 groups of 5
    found = near_duplicates(copies, 0.99, 0.1)
    assert found == {"clusters": 10, "duplicate_pairs": 10 * 10, "rows_with_duplicate": 50, "max_cosine": pytest.approx(1.0)}
    assert near_duplicates(torch.randn(200, 64, generator=generator), 0.99, 0.1)["clusters"] == 200
    ray = torch.ones(4, 16) * torch.tensor([[1.0], [2.0], [4.0], [8.0]])  # one direction, norms apart: distinct
    assert near_duplicates(ray, 0.99, 0.1)["clusters"] == 4
    assert near_duplicates(ray, 0.99, 0.9)["clusters"] == 1  # a chain, clustered greedily from its first row


def test_chance_follows_the_tables_spread():
    generator = torch.Generator().manual_seed(0)
    wide = torch.randn(256, 16, generator=generator)
    assert chance_clusters(wide, 0.99, 0.1, seed=0) == 256
    cone = 10.0 + 0.1 * torch.randn(256, 4, generator=generator)  # far from the origin, narrow: mostly "duplicates"
    assert chance_clusters(cone, 0.99, 0.1, seed=0) < 64


def test_routing_simulation_matches_inputs_drawn_in_d_dimensions():
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(6, 40, generator=generator, dtype=torch.float64), torch.tensor([0.5, 0, 0, 0, 0, -0.5])
    simulated = simulate_routing(weight, bias, 20000, seed=0)
    x = torch.randn(20000, 40, generator=generator, dtype=torch.float64)
    direct = torch.bincount((x @ weight.T + bias).argmax(-1), minlength=6).double() / len(x)
    assert simulated["top1"] == pytest.approx(direct.tolist(), abs=0.02)
    assert sum(simulated["top2"]) == pytest.approx(1.0)


def test_a_bias_alone_routes_everything_to_one_expert():
    simulated = simulate_routing(torch.zeros(4, D, dtype=torch.float64), torch.tensor([0.0, 0.1, 0.0, 0.0]), 512, seed=0)
    assert simulated["top1"] == [0.0, 1.0, 0.0, 0.0]
    assert simulated["z_loss"] == pytest.approx((0.1 + math.log(1 + 3 * math.exp(-0.1))) ** 2, rel=1e-5)


def test_share_summary_by_hand():
    summary = share_summary([0.5, 0.3, 0.2, 0.0])
    entropy = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)) / math.log(4)
    assert summary == pytest.approx({"max_share": 0.5, "entropy": entropy, "coverage": 0.75})
    assert share_summary([0.25] * 4)["entropy"] == pytest.approx(1.0)


# --- judge ---------------------------------------------------------------------------------------

def table(share: float, chance_share: float = 1.0, codebook: bool = True) -> dict:
    return {"name": "q.embedding.weight", "label": "q.embedding.weight", "rows": 100, "dim": 8, "sampled": 100,
            "clusters": round(share * 100), "chance_clusters": round(chance_share * 100), "chance_share": chance_share,
            "distinct_share": share, "distinct_rows": round(share * 100), "spread": 1.0, "duplicate_pairs": 0,
            "rows_with_duplicate": 0, "zero_rows": 0, "max_cosine": 1.0, "codebook": codebook}


def router(experts: int, max_share: float, coverage: float = 1.0, distinct: int | None = None, z_loss: float = 5.0) -> dict:
    return {"name": "moe.gate.weight", "experts": experts, "dim": D, "siblings": experts,
            "distinct_rows": experts if distinct is None else distinct, "distinct_share": 1.0, "max_row_cosine": 0.2,
            "top_expert": 0, "max_share": max_share, "entropy": 0.9, "coverage": coverage, "top2_max_share": max_share,
            "z_loss": z_loss, "bias_lead": 0.0, "shares": [max_share] + [(1 - max_share) / (experts - 1)] * (experts - 1)}


def judged(tables=(), routers=()):
    m = Measurement(metrics={"num_tables": len(tables), "num_routers": len(routers), "tables": list(tables), "routers": list(routers)})
    findings = WeightCollapse().judge(m)
    return derive(findings)[0], findings


@pytest.mark.parametrize(("share", "chance", "status"), [
    (0.099, 1.0, "fail"), (0.1, 1.0, "warn"), (0.499, 1.0, "warn"), (0.5, 1.0, "pass"),
    (0.05, 0.2, "pass"),  # chance itself says most rows of such a narrow table are near-duplicates: not judged
])
def test_table_edges(share, chance, status):
    got, findings = judged([table(share, chance)])
    assert got == status
    if status != "pass":
        assert findings[0].where == ("q.embedding.weight",) and findings[0].fixes == ("codebook-reset",)


def test_a_collapsed_embedding_gets_advice_and_no_codebook_fix():
    _, findings = judged([table(0.05, codebook=False)])
    assert findings[0].fixes == () and "embedding" in findings[0].advice[0]


@pytest.mark.parametrize(("experts", "max_share", "coverage", "status"), [
    (8, 0.29, 0.75, "pass"), (8, 0.31, 0.75, "warn"), (8, 0.5, 0.75, "warn"), (8, 0.51, 0.75, "fail"),
    (8, 0.2, 0.5, "warn"), (8, 0.2, 0.25, "fail"),  # 90% of the choices on half, on a quarter of the experts
    (4, 0.5, 1.0, "pass"), (4, 0.51, 1.0, "warn"), (4, 0.76, 1.0, "fail"),  # E = 4: bounds 2/E and 3/E
    (2, 0.75, 1.0, "pass"), (2, 0.76, 1.0, "warn"), (2, 0.91, 1.0, "fail"),  # E = 2: capped at 0.75 and 0.9
    (2, 0.6, 0.5, "pass"),  # coverage is not judged below 4 experts
])
def test_router_share_edges(experts, max_share, coverage, status):
    got, findings = judged(routers=[router(experts, max_share, coverage)])
    assert got == status
    if status != "pass":
        assert findings[0].where == ("moe.gate.weight",)
        assert set(findings[0].fixes) == {"load-balance-loss", "noisy-top-k"}


@pytest.mark.parametrize(("distinct", "status"), [(8, "pass"), (7, "warn"), (5, "warn"), (4, "fail"), (1, "fail")])
def test_router_distinct_row_edges(distinct, status):
    assert judged(routers=[router(8, 0.2, 0.8, distinct)])[0] == status


def test_large_simulated_logits_also_prescribe_the_z_loss():
    _, findings = judged(routers=[router(8, 0.9, 0.125, z_loss=80.0)])
    assert "router-z-loss" in findings[0].fixes


def test_nothing_to_judge_is_a_skip():
    result = run_check(WeightCollapse(), Weights.from_state_dict({"fc.weight": torch.randn(4, 4), "fc.bias": torch.zeros(4)}))
    assert result.status == "skip"


# --- the prescribed fixes -------------------------------------------------------------------------

def test_load_balance_loss_and_gate_noise_remove_the_router_collapse():
    """dreaming-moe's failing router (zero weights, experts averaged: no task gradient) stays at zero; the
    balancing loss gives it a gradient and the gate noise breaks its ties, and its rows spread."""
    config = {**SAMPLES["dreaming-moe"].failing, "n_train": 256, "n_eval": 64, "steps": 40, "n_blocks": 1}
    results = []
    for fixes in ([], ["load-balance-loss", "noisy-top-k"]):
        seed_everything(0)
        subject = apply_fixes(build_subject("dreaming-moe", config), fixes)
        train(subject)
        weights = Weights.from_state_dict(subject.model.state_dict())
        results.append(run_check(WeightCollapse(), Evidence(subject=build_subject("dreaming-moe", config), weights=weights)))
    before, after = results
    assert before.status == "fail" and {"load-balance-loss", "noisy-top-k"} <= set(before.fixes), before.summary
    assert after.status == "pass", after.summary
    assert after.metrics["routers"][0]["distinct_rows"] == 4
