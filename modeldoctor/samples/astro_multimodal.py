"""Sample patient `astro-multimodal` (seed 000): a masked multimodal transformer over galaxy tokens.

Synthetic galaxies whose modalities share real structure, so cross-modal prediction is learnable:
- redshift z shifts the spectral emission lines, tilts the continuum and reddens the image;
- stellar mass sets the image brightness and size;
- star-formation rate sets the line strength and the light-curve variability.

Each modality is tokenized: 4×4 patches of the 2-channel 16×16 image, 4-bin segments of the
32-bin spectrum and 4-sample segments of the 16-sample light curve go through small VQ codebooks;
z, mass and SFR are binned. A small transformer predicts masked tokens. Heads: `redshift` (the
bin centre of the predicted z token) and `spectrum` (the decoded predicted spectrum tokens).

Failing variant (the seed): the image and spectrum codebooks collapsed (initialised away from the
data, so a few codes take every vector and the others never move), and the LR is constant. The
spectrum and image tokens then carry almost nothing: redshift is predicted about as well as by the
median, and the predicted spectrum does not correlate with the truth. Healthy twin: k-means-fitted
codebooks and warmup + cosine.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..core.capabilities import Capabilities
from ..core.registry import register_subject
from ..core.subject import Codec, Head, Recipe, Subject, Task
from ..nn.vq import PatchTokenizer, ScalarBinning, VectorQuantizer
from . import Sample, register_sample

IMAGE, PATCH, SPECTRUM, SEGMENT, CURVE = 16, 4, 32, 4, 16
N_IMAGE, N_SPECTRUM, N_CURVE = (IMAGE // PATCH) ** 2, SPECTRUM // SEGMENT, CURVE // SEGMENT
SCALARS = {"redshift": (0.0, 2.0), "mass": (0.0, 1.0), "sfr": (0.0, 1.0)}

DEFAULTS = {
    "n_train": 4096,
    "n_eval": 512,
    "batch_size": 32,
    "codes": 64,
    "bins": 32,
    "codebook_init": "collapsed",  # collapsed (the seed's failure) | kmeans
    "codebook_iters": 10,
    "d_model": 64,
    "n_heads": 4,
    "n_layers": 2,
    "modality_mask_p": 0.4,
    "lr": 2e-3,
    "steps": 600,
    "schedule": "constant",
    "warmup_steps": 50,
    "data_seed": 11,
}


def make_galaxies(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Latents and the three observed modalities of `n` synthetic galaxies."""
    z = torch.rand(n, generator=generator) * 2.0
    mass = torch.rand(n, generator=generator)
    sfr = (0.6 * torch.rand(n, generator=generator) + 0.4 * mass).clamp(0, 1)
    axis = torch.linspace(-1, 1, IMAGE)
    radius2 = axis[None, :, None] ** 2 + axis[None, None, :] ** 2  # (1, H, W)
    size = (0.15 + 0.35 * mass / (1 + 0.5 * z))[:, None, None]
    blob = torch.exp(-radius2 / size) * (0.3 + 0.7 * mass)[:, None, None]  # (n, H, W)
    red = (0.25 + 0.35 * z)[:, None, None]
    sky = 0.2  # background level: the image sits far from a codebook initialised near 0
    image = sky + 0.8 * torch.stack([blob * (1.0 - red / 1.2), blob * red / 1.2], dim=1)  # (n, 2, H, W) in [0, 1]
    wavelength = torch.linspace(0, 1, SPECTRUM)
    spectrum = 1.0 + 0.1 * (z[:, None] - 1) * (wavelength - 0.5)  # continuum with a tilt (n, S), far from 0
    for rest in (0.12, 0.28):
        centre = (rest * (1 + z))[:, None]
        spectrum = spectrum + (0.2 + 0.6 * sfr)[:, None] * torch.exp(-((wavelength - centre) ** 2) / 0.0008)
    time = torch.linspace(0, 1, CURVE)
    phase = torch.rand(n, 1, generator=generator) * 2 * math.pi
    curve = 0.5 + (0.05 + 0.35 * sfr)[:, None] * torch.sin(2 * math.pi * 3 * time + phase)  # (n, T)
    return {"image": image, "spectrum": spectrum, "curve": curve, "redshift": z, "mass": mass, "sfr": sfr}


class ImageTokenizer(nn.Module):
    """VQ over 4×4 patches of a 2-channel image: encode (B, 2, H, W) -> (B, 16) codes, decode back."""

    def __init__(self, num_codes: int):
        super().__init__()
        self.num_codes = num_codes
        self.quantizer = VectorQuantizer(num_codes, 2 * PATCH * PATCH)

    def patches(self, image: torch.Tensor) -> torch.Tensor:  # (B, 2, H, W) -> (B, 16, 32)
        n, grid = image.shape[0], IMAGE // PATCH
        patches = image.reshape(n, 2, grid, PATCH, grid, PATCH).permute(0, 2, 4, 1, 3, 5)
        return patches.reshape(n, N_IMAGE, 2 * PATCH * PATCH)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(self.patches(image))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, 16) -> (B, 2, H, W)
        n, grid = codes.shape[0], IMAGE // PATCH
        patches = self.quantizer.decode(codes).reshape(n, grid, grid, 2, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
        return patches.reshape(n, 2, IMAGE, IMAGE)


class AstroTokenizer(nn.Module):
    """VQ codebooks for image patches, spectrum and light-curve segments; binning for the scalars.

    Token ids live in one vocabulary: each modality has its own block of ids (see `offsets`).
    """

    def __init__(self, codes: int, bins: int):
        super().__init__()
        self.image = ImageTokenizer(codes)
        self.spectrum = PatchTokenizer(codes, SEGMENT, dims=1)
        self.curve = PatchTokenizer(codes, SEGMENT, dims=1)
        self.bins = {name: ScalarBinning(low, high, bins) for name, (low, high) in SCALARS.items()}
        sizes = [codes, codes, codes] + [bins] * len(SCALARS)
        names = ["image", "spectrum", "curve", *SCALARS]
        self.offsets = dict(zip(names, [sum(sizes[:i]) for i in range(len(sizes))]))
        self.sizes = dict(zip(names, sizes))
        self.vocab = sum(sizes)

    @torch.no_grad()
    def tokens(self, batch: dict) -> torch.Tensor:
        """(B, L) token ids: 16 image, 8 spectrum, 4 light-curve and 3 scalar tokens."""
        n = batch["image"].shape[0]
        parts = [getattr(self, name).encode(batch[name]).reshape(n, -1) + self.offsets[name] for name in ("image", "spectrum", "curve")]
        parts += [(self.bins[name].encode(batch[name]) + self.offsets[name])[:, None] for name in SCALARS]
        return torch.cat(parts, dim=1)


SPANS = {"image": (0, N_IMAGE), "spectrum": (N_IMAGE, N_IMAGE + N_SPECTRUM),
         "curve": (N_IMAGE + N_SPECTRUM, N_IMAGE + N_SPECTRUM + N_CURVE)}
SPANS.update({name: (SPANS["curve"][1] + i, SPANS["curve"][1] + i + 1) for i, name in enumerate(SCALARS)})
LENGTH = SPANS["sfr"][1]


class AstroTransformer(nn.Module):
    """Tokenizer + masked transformer: token and position embeddings -> encoder -> logits over the vocabulary."""

    def __init__(self, codes: int, bins: int, d_model: int, n_heads: int, n_layers: int):
        super().__init__()
        self.tokenizer = AstroTokenizer(codes, bins)
        self.mask_id = self.tokenizer.vocab
        self.embed = nn.Embedding(self.tokenizer.vocab + 1, d_model)
        self.position = nn.Parameter(torch.randn(LENGTH, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.head = nn.Linear(d_model, self.tokenizer.vocab)

    def forward(self, tokens: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        # tokens, masked (B, L) -> logits (B, L, V)
        inputs = tokens.masked_fill(masked, self.mask_id)
        return self.head(self.encoder(self.embed(inputs) + self.position))

    def logits_for(self, logits: torch.Tensor, modality: str) -> torch.Tensor:
        """Logits of one modality's positions, restricted to its own block of ids: (B, n, size)."""
        start, end = SPANS[modality]
        offset, size = self.tokenizer.offsets[modality], self.tokenizer.sizes[modality]
        return logits[:, start:end, offset : offset + size]


def modality_mask(batch_size: int, hidden: list[str]) -> torch.Tensor:
    masked = torch.zeros(batch_size, LENGTH, dtype=torch.bool)
    for name in hidden:
        masked[:, slice(*SPANS[name])] = True
    return masked


class GalaxyBatches:
    """Re-iterable batches of dicts of galaxy tensors (each (B, ...))."""

    def __init__(self, data: dict[str, torch.Tensor], batch_size: int, shuffle: bool):
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.data["redshift"]) / self.batch_size)

    def __iter__(self):
        n = len(self.data["redshift"])
        order = torch.randperm(n) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            yield {key: value[rows] for key, value in self.data.items()}


def training_loss(model: AstroTransformer, batch: dict, mask_p: float) -> torch.Tensor:
    """Masked-token cross-entropy: each modality is hidden with probability mask_p (at least one)."""
    tokens = model.tokenizer.tokens(batch)
    names = list(SPANS)
    hide = torch.rand(tokens.shape[0], len(names)) < mask_p
    hide[~hide.any(1), torch.randint(0, len(names), ((~hide.any(1)).sum(),))] = True
    masked = torch.zeros_like(tokens, dtype=torch.bool)
    for column, name in enumerate(names):
        masked[:, slice(*SPANS[name])] |= hide[:, column, None]
    logits = model(tokens, masked)
    return F.cross_entropy(logits[masked], tokens[masked])


def predict_redshift(model: AstroTransformer, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Redshift from image, spectrum and light curve (all scalars hidden): bin centre of the argmax."""
    tokens = model.tokenizer.tokens(batch)
    logits = model(tokens, modality_mask(tokens.shape[0], list(SCALARS)))
    bins = model.logits_for(logits, "redshift")[:, 0].argmax(-1)  # (B,)
    return model.tokenizer.bins["redshift"].decode(bins), batch["redshift"]


def predict_spectrum(model: AstroTransformer, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The spectrum decoded from its predicted tokens, given image, light curve and scalars."""
    tokens = model.tokenizer.tokens(batch)
    logits = model(tokens, modality_mask(tokens.shape[0], ["spectrum"]))
    codes = model.logits_for(logits, "spectrum").argmax(-1)  # (B, 8)
    return model.tokenizer.spectrum.decode(codes), batch["spectrum"]


@torch.no_grad()
def fit_without_restarts(quantizer: VectorQuantizer, latents: torch.Tensor, iters: int) -> None:
    """Lloyd updates that move only the codes in use: from the default init near 0, the few codes
    that win the far-away data at the start keep it, and the others never move (codebook collapse)."""
    latents = latents.reshape(-1, quantizer.dim)
    weight = quantizer.embedding.weight
    for _ in range(iters):
        codes = quantizer.encode(latents)
        counts = torch.bincount(codes, minlength=quantizer.num_codes)
        sums = torch.zeros_like(weight).index_add_(0, codes, latents)
        used = counts > 0
        weight[used] = sums[used] / counts[used, None]


@torch.no_grad()
def fit_tokenizer(tokenizer: AstroTokenizer, data: dict, init: str, iters: int, generator: torch.Generator) -> None:
    """Fit the VQ codebooks on training data, once per data seed (like a pre-trained tokenizer):
    k-means, or (the failing variant) the collapse above for the image and spectrum codebooks."""
    for name in ("image", "spectrum", "curve"):
        module = getattr(tokenizer, name)
        latents = module.patches(data[name]).reshape(-1, module.quantizer.dim)
        weight = module.quantizer.embedding.weight
        if init == "collapsed" and name in ("image", "spectrum"):
            bound = 1.0 / module.quantizer.num_codes  # nn.Embedding-style default init near 0
            weight.copy_((torch.rand(weight.shape, generator=generator) * 2 - 1) * bound)
            fit_without_restarts(module.quantizer, latents, iters)
        else:
            module.quantizer.init_kmeans(latents, iters, generator)


@register_subject("astro-multimodal")
def build(config: dict | None = None) -> Subject:
    cfg = {**DEFAULTS, **(config or {})}
    generator = torch.Generator().manual_seed(cfg["data_seed"])
    data = make_galaxies(cfg["n_train"] + cfg["n_eval"], generator)
    train = {k: v[: cfg["n_train"]] for k, v in data.items()}
    held_out = {k: v[cfg["n_train"] :] for k, v in data.items()}
    model = AstroTransformer(cfg["codes"], cfg["bins"], cfg["d_model"], cfg["n_heads"], cfg["n_layers"])
    fit_tokenizer(model.tokenizer, train, cfg["codebook_init"], cfg["codebook_iters"], generator)
    model.tokenizer.requires_grad_(False)  # the codecs are fitted here; the transformer's loss never trains them
    tokenizer = model.tokenizer
    eval_batches = GalaxyBatches(held_out, cfg["batch_size"], shuffle=False)
    held_out_batches = list(eval_batches)
    samples = {key: [batch[key] for batch in held_out_batches] for key in held_out}
    codecs = {
        "image": Codec("image", tokenizer.image.encode, tokenizer.image.decode, cfg["codes"], samples["image"],
                       value_range=(0.0, 1.0), module="tokenizer.image"),
        "spectrum": tokenizer.spectrum.codec(samples["spectrum"], "tokenizer.spectrum"),
        "curve": tokenizer.curve.codec(samples["curve"], "tokenizer.curve"),
    }
    codecs.update({name: tokenizer.bins[name].codec(samples[name]) for name in SCALARS})
    return Subject(
        name="astro-multimodal",
        model=model,
        train_batches=GalaxyBatches(train, cfg["batch_size"], shuffle=True),
        eval_batches=eval_batches,
        loss=lambda m, batch: training_loss(m, batch, cfg["modality_mask_p"]),
        predict=predict_redshift,
        # No value_range: the objective is masked-token cross-entropy, so overfit-batch judges the loss drop.
        task=Task(kind="regression", metric="mae", higher_is_better=False),
        recipe=Recipe(optimizer="adam", lr=cfg["lr"], steps=cfg["steps"], schedule=cfg["schedule"],
                      warmup_steps=cfg["warmup_steps"] if cfg["schedule"] == "warmup-cosine" else 0),
        config=cfg,
        codecs=codecs,
        heads={"redshift": Head("regression", predict_redshift), "spectrum": Head("signal", predict_spectrum)},
        capabilities=Capabilities(
            # attention checks: the observed modalities that predict() feeds (it hides the scalar tokens)
            token_modalities=lambda batch: {name: modality_mask(1, [name])[0] for name in ("image", "spectrum", "curve")},
            embedding_layer="embed",
        ),
        description="masked multimodal transformer over galaxy tokens; "
        + ("collapsed image and spectrum codebooks, constant LR" if cfg["codebook_init"] == "collapsed"
           else "k-means codebooks, warmup + cosine"),
    )


register_sample(Sample(
    name="astro-multimodal",
    seed_story="000_0d288d4c4d840177.txt",
    failing={"codebook_init": "collapsed", "schedule": "constant"},
    healthy={"codebook_init": "kmeans", "schedule": "warmup-cosine"},
    summary="multimodal galaxy model: collapsed VQ codebooks make redshift no better than the median",
))
