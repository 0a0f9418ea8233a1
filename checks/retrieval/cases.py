"""Cases for retrieval: towers built directly at the embedding level, no training.

Three modalities of the same 300 items are noisy linear views x_m = z M_m + σ_m ε of a shared
latent z (8-d). An aligned tower inverts its view (pseudo-inverse of M_m, so its embedding ≈ z);
an untrained tower keeps random weights; a blind one has random weights orthogonal to the
directions that carry z (like a pretrained encoder that reads only what this task does not need).
"""
import torch
from torch import nn

from modeldoctor import Recipe, Subject, Task
from modeldoctor.core.capabilities import Capabilities
from modeldoctor.probes.retrieval_metrics import info_nce

DIMS = {"image": 48, "text": 32, "audio": 24}
LATENT, ITEMS = 8, 300


class Towers(nn.Module):
    def __init__(self):
        super().__init__()
        self.towers = nn.ModuleDict({name: nn.Linear(dim, LATENT) for name, dim in DIMS.items()})
        self.register_buffer("logit_scale", torch.tensor(0.0))

    def forward(self, batch):  # {m: (B, d_m)} -> {m: (B, LATENT)}
        return {name: tower(batch[name]) for name, tower in self.towers.items()}


def views(noise: dict, seed: int = 0) -> tuple[dict, dict]:
    """({modality: (ITEMS, d) inputs}, {modality: (LATENT, d) mixing matrix})."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(ITEMS, LATENT, generator=g)  # (N, L)
    mixing = {name: torch.randn(LATENT, dim, generator=g) for name, dim in DIMS.items()}
    inputs = {name: z @ mixing[name] + noise.get(name, 0.1) * torch.randn(ITEMS, dim, generator=g)
              for name, dim in DIMS.items()}
    return inputs, mixing


def subject(name: str, aligned: tuple = tuple(DIMS), noise: dict | None = None, constant: tuple = (),
            blind: tuple = ()) -> Subject:
    torch.manual_seed(0)
    inputs, mixing = views(noise or {})
    model = Towers()
    with torch.no_grad():
        for modality in aligned:
            tower = model.towers[modality]
            tower.weight.copy_(torch.linalg.pinv(mixing[modality]).T)  # (L, d): x -> ≈ z
            tower.bias.zero_()
        for modality in blind:  # remove every weight component along the content directions (rows of M)
            content = torch.linalg.qr(mixing[modality].T).Q  # (d, L) orthonormal
            weight = model.towers[modality].weight  # (L, d)
            weight.copy_(weight - weight @ content @ content.T)
        for modality in constant:
            model.towers[modality].weight.zero_()
    batches = [{m: x[i : i + 100] for m, x in inputs.items()} for i in range(0, ITEMS, 100)]
    return Subject(
        name=name, model=model, train_batches=batches, eval_batches=batches,
        loss=lambda m, b: info_nce(m(b), m.logit_scale),
        predict=lambda m, b: (m(b)["image"] @ m(b)["text"].T, torch.arange(len(b["image"]))),
        task=Task(kind="retrieval", metric="recall@1"), recipe=Recipe(steps=10),
        capabilities=Capabilities(embed=lambda m, b: m(b), param_groups={k: [f"towers.{k}"] for k in DIMS},
                      temperature="logit_scale"),
    )


def case_untrained_towers():
    """Three random towers: every direction at chance."""
    return subject("untrained-towers", aligned=())


def case_aligned_towers():
    return subject("aligned-towers")


def case_one_untrained_tower():
    """Image and text aligned, audio blind (the seed's failure): the check names 'audio'."""
    return subject("one-untrained-tower", aligned=("image", "text"), blind=("audio",))


def case_constant_tower():
    """The audio tower embeds every item alike: ties count against the match, so it cannot score."""
    return subject("constant-tower", constant=("audio",))


def case_lagging_noisy_modality():
    """Audio is a much noisier view: well above chance, but its R@1 lags far behind image↔text."""
    return subject("lagging-noisy-modality", noise={"audio": 6.0})
