"""Healthy, briefly trained models of many architectures: the false-alarm corpus of the weight checks.

Not a test file: `tests/test_weights_false_alarms.py` imports it. Each builder trains one small model on
a seeded synthetic task, asserts that its loss fell clearly, and returns a `Built` (name, model,
optimizer, scheduler or None): the weight checks must not `fail` any of them. `corpus()` builds them all
once per process (about 15-25 s on one CPU thread); `hf_corpus()` adds tiny Hugging Face models built
from configs with random weights (needs `transformers`; nothing is downloaded).

The models are written the way people write them, not the way the checks read them: DLRM-style names
(`emb_l.0`), tied and untied lm heads, nanoGPT's custom init and decay/no-decay param groups, BatchNorm
trained in train mode, a VQ codebook initialised by k-means, SGD with momentum as well as Adam(W).
"""
from __future__ import annotations

import functools
import math
import time
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from modeldoctor.nn.vq import VectorQuantizer

torch.set_num_threads(1)


class Built(NamedTuple):
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None  # an LR scheduler, or None


# name -> (first loss, last loss, seconds to build), filled as builders run (for reports).
STATS: dict[str, tuple[float, float, float]] = {}


def fit(name: str, model: nn.Module, optimizer, scheduler, step_loss: Callable[[], torch.Tensor], steps: int,
        drop: float = 0.5) -> list[float]:
    """Train `steps` steps of `step_loss()`; assert the mean of the last 10 losses < drop x the first 10."""
    model.train()
    losses = []
    for _ in range(steps):
        loss = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    model.eval()
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < drop * first, f"{name}: loss {first:.4g} -> {last:.4g} did not fall below {drop}x"
    STATS[name] = (first, last, 0.0)
    return losses


def sampler(n: int, batch: int, generator: torch.Generator) -> Callable[[], torch.Tensor]:
    return lambda: torch.randint(n, (batch,), generator=generator)


def fit_batches(name: str, model: nn.Module, optimizer, scheduler, inputs: torch.Tensor, targets: torch.Tensor,
                loss: Callable, batch: int, generator: torch.Generator, steps: int, drop: float) -> "Built":
    """`fit` on random minibatches of (inputs, targets) with `loss(model(x), y)`; the Built it gives."""
    pick = sampler(len(inputs), batch, generator)

    def step():
        i = pick()
        return loss(model(inputs[i]), targets[i])

    fit(name, model, optimizer, scheduler, step, steps, drop=drop)
    return Built(name, model, optimizer, scheduler)


def teacher(dims: list[int], generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """A fixed random tanh MLP: a smooth target function to regress or classify by."""
    mats = [torch.randn(a, b, generator=generator) / math.sqrt(a) for a, b in zip(dims, dims[1:])]

    def apply(x):
        for i, w in enumerate(mats):
            x = x @ w
            x = torch.tanh(x) if i < len(mats) - 1 else x
        return x

    return apply


def warmup_cosine(optimizer, warmup: int, total: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


# --- MLPs -----------------------------------------------------------------------------------------

def build_mlp_tanh() -> Built:
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1024, 16, generator=g)  # (N, 16)
    y = teacher([16, 32, 4], g)(x)  # (N, 4)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return fit_batches("mlp-tanh", model, opt, None, x, y, F.mse_loss, 64, g,
                       400, drop=0.2)


def build_mlp_relu_sgd() -> Built:
    torch.manual_seed(2)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2048, 20, generator=g)
    labels = teacher([20, 32, 5], g)(x).argmax(-1)  # (N,)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=400)
    return fit_batches("mlp-relu-sgd", model, opt, sched, x, labels, F.cross_entropy, 64, g,
                       400, drop=0.4)


# --- convnets -------------------------------------------------------------------------------------

def blob_images(n: int, size: int, channels: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, size, size) with a bright Gaussian blob in one of 4 quadrants (the label) plus noise."""
    labels = torch.randint(4, (n,), generator=generator)
    grid = torch.arange(size).float()
    cy = (labels // 2).float() * size / 2 + size / 4 + torch.randn(n, generator=generator)
    cx = (labels % 2).float() * size / 2 + size / 4 + torch.randn(n, generator=generator)
    blob = torch.exp(-((grid[None, :, None] - cy[:, None, None]) ** 2 + (grid[None, None, :] - cx[:, None, None]) ** 2) / 4)
    colour = torch.rand(n, channels, 1, 1, generator=generator) + 0.5
    images = blob[:, None] * colour + 0.3 * torch.randn(n, channels, size, size, generator=generator)
    return images, labels


def build_convnet_bn() -> Built:
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    x, labels = blob_images(1024, 12, 1, g)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4),
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    return fit_batches("convnet-bn", model, opt, None, x, labels, F.cross_entropy, 32, g,
                       150, drop=0.3)


def build_conv1d() -> Built:
    torch.manual_seed(4)
    g = torch.Generator().manual_seed(4)
    n, length = 1024, 64
    labels = torch.randint(4, (n,), generator=g)
    t = torch.arange(length).float()
    phase = torch.rand(n, 1, generator=g) * 6.28
    x = torch.sin(t * (labels[:, None] + 1) * 0.25 + phase) + 0.5 * torch.randn(n, length, generator=g)
    x = x[:, None]  # (N, 1, L)

    class Conv1dNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv1d(1, 32, 5, padding=2), nn.ReLU(),
                                          nn.Conv1d(32, 32, 5, stride=2, padding=2), nn.ReLU(),
                                          nn.Conv1d(32, 48, 3, stride=2, padding=1), nn.ReLU())
            self.head = nn.Linear(48, 4)

        def forward(self, s):  # (B, 1, L) -> (B, 4)
            return self.head(self.features(s).mean(-1))

    model = Conv1dNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    return fit_batches("conv1d", model, opt, sched, x, labels, F.cross_entropy, 32, g,
                       200, drop=0.3)


class BasicBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 4, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(width), BasicBlock(width))
        self.fc = nn.Linear(width, classes)

    def forward(self, x):  # (B, 3, H, W) -> (B, classes)
        return self.fc(self.layer1(self.stem(x)).mean((2, 3)))


def build_resnet_sgd() -> Built:
    torch.manual_seed(5)
    g = torch.Generator().manual_seed(5)
    x, labels = blob_images(1024, 8, 3, g)
    model = TinyResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=120)
    return fit_batches("resnet-sgd", model, opt, sched, x, labels, F.cross_entropy, 32, g,
                       120, drop=0.3)


def build_conv_autoencoder() -> Built:
    torch.manual_seed(6)
    g = torch.Generator().manual_seed(6)
    x, _ = blob_images(1024, 16, 1, g)
    x = x.clamp(-1, 1)

    class ConvAutoencoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
            self.decoder = nn.Sequential(nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.ReLU(),
                                         nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1))

        def forward(self, s):  # (B, 1, 16, 16) -> (B, 1, 16, 16)
            return self.decoder(self.encoder(s))

    model = ConvAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return fit_batches("conv-autoencoder", model, opt, None, x, x, F.mse_loss, 32, g,
                       250, drop=0.5)


# --- sequence models ------------------------------------------------------------------------------

def build_lstm() -> Built:
    torch.manual_seed(7)
    g = torch.Generator().manual_seed(7)
    vocab, length = 12, 20
    tokens = torch.randint(vocab, (2048, length), generator=g)
    labels = ((tokens < vocab // 2).sum(1) > length // 2).long()  # majority of low tokens

    class LSTMClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, 32)
            self.lstm = nn.LSTM(32, 64, batch_first=True)
            self.out = nn.Linear(64, 2)

        def forward(self, t):  # (B, T) -> (B, 2)
            h, _ = self.lstm(self.embed(t))
            return self.out(h[:, -1])

    model = LSTMClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    return fit_batches("lstm", model, opt, None, tokens, labels, F.cross_entropy, 64, g,
                       250, drop=0.5)


def build_gru() -> Built:
    torch.manual_seed(8)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1024, 16, 6, generator=g)  # (N, T, 6)
    y = torch.cumsum(x[..., :2], dim=1) / torch.arange(1, 17).float()[None, :, None]  # running means (N, T, 2)

    class GRURegressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(6, 48, num_layers=2, batch_first=True)
            self.readout = nn.Linear(48, 2)

        def forward(self, s):  # (B, T, 6) -> (B, T, 2)
            return self.readout(self.rnn(s)[0])

    model = GRURegressor()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    return fit_batches("gru", model, opt, None, x, y, F.mse_loss, 32, g,
                       200, drop=0.3)


def build_transformer_encoder() -> Built:
    torch.manual_seed(9)
    g = torch.Generator().manual_seed(9)
    vocab, length, classes = 16, 12, 4
    labels = torch.randint(classes, (2048,), generator=g)
    tokens = torch.randint(vocab, (2048, length), generator=g)
    plant = torch.rand(2048, length, generator=g) < 0.35
    tokens = torch.where(plant, labels[:, None], tokens)  # the label token is over-represented

    class EncoderClassifier(nn.Module):
        def __init__(self, d: int = 32):
            super().__init__()
            self.tok = nn.Embedding(vocab, d)
            self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
            layer = nn.TransformerEncoderLayer(d, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            self.cls = nn.Linear(d, classes)

        def forward(self, t):  # (B, T) -> (B, classes)
            return self.cls(self.norm(self.encoder(self.tok(t) + self.pos).mean(1)))

    model = EncoderClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = warmup_cosine(opt, 20, 200)
    return fit_batches("transformer-encoder", model, opt, sched, tokens, labels, F.cross_entropy, 32, g,
                       200, drop=0.3)


# --- nanoGPT-style decoder ----------------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, block: int):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.register_buffer("bias", torch.tril(torch.ones(block, block)).view(1, 1, block, block))  # causal mask

    def forward(self, x):  # (B, T, D)
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, H, T, T)
        att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf")).softmax(-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(b, t, d))


class GPTBlock(nn.Module):
    def __init__(self, d: int, heads: int, block: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads, block)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(d, 4 * d), c_proj=nn.Linear(4 * d, d)))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 32, block: int = 16, d: int = 48, layers: int = 2, heads: int = 4,
                 tied: bool = True, gpt_init: bool = True):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, d), wpe=nn.Embedding(block, d),
            h=nn.ModuleList(GPTBlock(d, heads, block) for _ in range(layers)), ln_f=nn.LayerNorm(d)))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT
        if gpt_init:
            self.apply(self._init_weights)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, idx):  # (B, T) -> logits (B, T, vocab)
        t = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(t))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def markov_tokens(n: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """Sequences (N, length) of a Markov chain where each token has two likely successors."""
    succ = torch.randint(vocab, (vocab, 2), generator=generator)
    seqs = torch.empty(n, length, dtype=torch.long)
    seqs[:, 0] = torch.randint(vocab, (n,), generator=generator)
    for t in range(1, length):
        choice = torch.randint(2, (n,), generator=generator)
        nxt = succ[seqs[:, t - 1], choice]
        noise = torch.rand(n, generator=generator) < 0.1
        seqs[:, t] = torch.where(noise, torch.randint(vocab, (n,), generator=generator), nxt)
    return seqs


def build_gpt(tied: bool) -> Built:
    name = "nanogpt-tied" if tied else "nanogpt-untied"
    torch.manual_seed(10 + tied)
    g = torch.Generator().manual_seed(10 + tied)
    vocab, block = 32, 16
    data = markov_tokens(1024, block + 1, vocab, g)
    model = TinyGPT(vocab, block, tied=tied, gpt_init=tied)  # the untied one keeps PyTorch's default init
    # nanoGPT's configure_optimizers: weight decay on matrices only, two param groups
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=3e-3, betas=(0.9, 0.95))
    sched = warmup_cosine(opt, 20, 250)
    pick = sampler(len(data), 16, g)

    def step():
        seq = data[pick()]
        logits = model(seq[:, :-1])
        return F.cross_entropy(logits.reshape(-1, vocab), seq[:, 1:].reshape(-1))

    fit(name, model, opt, sched, step, 250, drop=0.6)
    return Built(name, model, opt, sched)


# --- mixture of experts -------------------------------------------------------------------------

class Top2MoE(nn.Module):
    """A top-2 routed MoE layer between an input and an output projection; experts in a ModuleList."""

    def __init__(self, d_in: int = 16, d: int = 32, hidden: int = 64, experts: int = 4, d_out: int = 4):
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.router = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
                                     for _ in range(experts))
        self.out = nn.Linear(d, d_out)
        self.aux_loss = torch.tensor(0.0)

    def forward(self, x):  # (B, d_in) -> (B, d_out)
        h = self.inp(x)  # (B, d)
        probs = self.router(h).softmax(-1)  # (B, E)
        top_p, top_i = probs.topk(2, dim=-1)  # (B, 2)
        top_p = top_p / top_p.sum(-1, keepdim=True)
        mixed = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_i == e).nonzero(as_tuple=True)
            if len(rows):
                mixed.index_add_(0, rows, top_p[rows, slot, None] * expert(h[rows]))
        # Switch-style load balancing: E * sum_e (fraction of routed slots to e) * (mean prob of e)
        experts = probs.shape[-1]
        frac = F.one_hot(top_i, experts).float().sum(1).mean(0) / 2  # (E,)
        self.aux_loss = experts * (frac * probs.mean(0)).sum()
        return self.out(h + mixed)


def build_moe() -> Built:
    torch.manual_seed(12)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2048, 16, generator=g)
    regimes = [teacher([16, 32, 4], g) for _ in range(4)]
    region = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()  # a different function in each quadrant
    y = torch.stack([f(x) for f in regimes], 1)[torch.arange(len(x)), region]  # (N, 4)
    model = Top2MoE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    pick = sampler(len(x), 64, g)

    def step():
        i = pick()
        return F.mse_loss(model(x[i]), y[i]) + 0.01 * model.aux_loss

    fit("moe-top2", model, opt, None, step, 300, drop=0.4)
    return Built("moe-top2", model, opt, None)


# --- VQ autoencoder -----------------------------------------------------------------------------

def build_vq_autoencoder() -> Built:
    torch.manual_seed(13)
    g = torch.Generator().manual_seed(13)
    z = torch.rand(2048, 3, generator=g) * 2 - 1
    x = teacher([3, 32, 32], g)(z)  # (N, 32) on a 3-D manifold
    x = (x - x.mean(0)) / x.std(0)

    class VQAutoencoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
            self.quantizer = VectorQuantizer(64, 8)
            self.decoder = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 32))

        def forward(self, s):  # (B, 32) -> (reconstruction (B, 32), vq loss)
            zq, _, vq_loss = self.quantizer(self.encoder(s))
            return self.decoder(zq), vq_loss

    model = VQAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    pick = sampler(len(x), 64, g)

    def warm():  # a few steps without quantization, then k-means-initialise the codebook on the latents
        i = pick()
        return F.mse_loss(model.decoder(model.encoder(x[i])), x[i])

    first = fit("vq-autoencoder-warmup", model, opt, None, warm, 60, drop=math.inf)
    with torch.no_grad():
        model.quantizer.init_kmeans(model.encoder(x[:1024]), generator=torch.Generator().manual_seed(0))

    def step():
        i = pick()
        recon, vq_loss = model(x[i])
        return F.mse_loss(recon, x[i]) + vq_loss

    rest = fit("vq-autoencoder", model, opt, None, step, 250, drop=math.inf)
    STATS.pop("vq-autoencoder-warmup")
    begin, end = sum(first[:10]) / 10, sum(rest[-10:]) / 10
    assert end < 0.5 * begin, f"vq-autoencoder: loss {begin:.4g} -> {end:.4g}"
    STATS["vq-autoencoder"] = (begin, end, 0.0)
    return Built("vq-autoencoder", model, opt, None)


# --- recommendation ---------------------------------------------------------------------------------

def build_recommender() -> Built:
    """DLRM-like: an EmbeddingBag of a user's history, an item Embedding, bottom and top MLPs (DLRM names)."""
    torch.manual_seed(14)
    g = torch.Generator().manual_seed(14)
    n_hist, n_items, dim, n = 60, 40, 16, 4096
    true_hist = torch.randn(n_hist, 4, generator=g)
    true_item = torch.randn(n_items, 4, generator=g)
    hist = torch.randint(n_hist, (n, 5), generator=g)  # 5 history items per example
    item = torch.randint(n_items, (n,), generator=g)
    dense = torch.randn(n, 8, generator=g)
    w_dense = torch.randn(8, generator=g) * 0.3
    logit = (true_hist[hist].mean(1) * true_item[item]).sum(-1) * 2 + dense @ w_dense
    clicks = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()

    class DLRM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb_l = nn.ModuleList([nn.EmbeddingBag(n_hist, dim, mode="mean"), nn.Embedding(n_items, dim)])
            self.bot_l = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, dim), nn.ReLU())
            self.top_l = nn.Sequential(nn.Linear(3 * dim + 3, 64), nn.ReLU(), nn.Linear(64, 1))

        def forward(self, h, it, d):  # (B, 5), (B,), (B, 8) -> logits (B,)
            feats = [self.bot_l(d), self.emb_l[0](h), self.emb_l[1](it)]  # 3 x (B, dim)
            z = torch.stack(feats, 1)  # (B, 3, dim)
            dots = (z @ z.transpose(1, 2))[:, [0, 0, 1], [1, 2, 2]]  # pairwise interactions (B, 3)
            return self.top_l(torch.cat([*feats, dots], -1)).squeeze(-1)

    model = DLRM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pick = sampler(n, 128, g)

    def step():
        i = pick()
        return F.binary_cross_entropy_with_logits(model(hist[i], item[i], dense[i]), clicks[i])

    fit("recommender-dlrm", model, opt, None, step, 300, drop=0.8)
    return Built("recommender-dlrm", model, opt, None)


# --- pre-LN residual MLP ----------------------------------------------------------------------------

class PreLNBlock(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):  # (B, d)
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


def build_preln_mlp() -> Built:
    torch.manual_seed(15)
    g = torch.Generator().manual_seed(15)
    x = torch.randn(2048, 24, generator=g)
    y = teacher([24, 64, 64, 6], g)(x)

    class PreLNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(24, 64)
            self.blocks = nn.ModuleList(PreLNBlock(64, 128) for _ in range(3))
            self.norm = nn.LayerNorm(64)
            self.head = nn.Linear(64, 6)

        def forward(self, s):
            h = self.stem(s)
            for block in self.blocks:
                h = block(h)
            return self.head(self.norm(h))

    model = PreLNNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = warmup_cosine(opt, 20, 300)
    return fit_batches("preln-gelu-mlp", model, opt, sched, x, y, F.mse_loss, 64, g,
                       300, drop=0.3)


BUILDERS: dict[str, Callable[[], Built]] = {
    "mlp-tanh": build_mlp_tanh,
    "mlp-relu-sgd": build_mlp_relu_sgd,
    "convnet-bn": build_convnet_bn,
    "conv1d": build_conv1d,
    "resnet-sgd": build_resnet_sgd,
    "conv-autoencoder": build_conv_autoencoder,
    "lstm": build_lstm,
    "gru": build_gru,
    "transformer-encoder": build_transformer_encoder,
    "nanogpt-tied": functools.partial(build_gpt, True),
    "nanogpt-untied": functools.partial(build_gpt, False),
    "moe-top2": build_moe,
    "vq-autoencoder": build_vq_autoencoder,
    "recommender-dlrm": build_recommender,
    "preln-gelu-mlp": build_preln_mlp,
}


def timed(name: str, builder: Callable[[], Built]) -> Built:
    start = time.perf_counter()
    built = builder()
    assert built.name == name, (built.name, name)
    first, last, _ = STATS.get(name, (math.nan, math.nan, 0.0))
    STATS[name] = (first, last, time.perf_counter() - start)
    return built


@functools.lru_cache(maxsize=1)
def corpus() -> dict[str, Built]:
    """Every plain-PyTorch model of the corpus by name, built once per process (treat them as read-only)."""
    return {name: timed(name, builder) for name, builder in BUILDERS.items()}


# --- Hugging Face tiny configs (random init, trained briefly; nothing downloaded) --------------------

def hf_fit(name: str, model, batch: Callable[[], dict], steps: int, lr: float = 2e-3, drop: float = 0.6):
    # as transformers.Trainer groups them: weight decay except on biases and norm weights
    named = list(model.named_parameters())
    no_decay = [n.endswith("bias") or "norm" in n.lower() for n, _ in named]
    opt = torch.optim.AdamW([{"params": [p for (_, p), nd in zip(named, no_decay) if not nd], "weight_decay": 0.01},
                             {"params": [p for (_, p), nd in zip(named, no_decay) if nd], "weight_decay": 0.0}], lr=lr)
    sched = warmup_cosine(opt, 5, steps)
    fit(name, model, opt, sched, lambda: model(**batch()).loss, steps, drop=drop)
    return Built(name, model, opt, sched)


def build_hf_bert() -> Built:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(20)
    g = torch.Generator().manual_seed(20)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=3)
    model = BertForSequenceClassification(config)
    labels = torch.randint(3, (512,), generator=g)
    ids = torch.randint(5, 64, (512, 16), generator=g)
    ids = torch.where(torch.rand(512, 16, generator=g) < 0.3, labels[:, None] + 1, ids)
    pick = sampler(512, 32, g)

    def batch():
        i = pick()
        return {"input_ids": ids[i], "labels": labels[i]}

    return hf_fit("hf-bert", model, batch, 60)


def build_hf_gpt2() -> Built:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(21)
    g = torch.Generator().manual_seed(21)
    config = GPT2Config(vocab_size=32, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    data = markov_tokens(512, 16, 32, g)
    pick = sampler(512, 16, g)

    def batch():
        seq = data[pick()]
        return {"input_ids": seq, "labels": seq}

    return hf_fit("hf-gpt2", model, batch, 80, lr=3e-3)


def build_hf_mixtral() -> Built:
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(22)
    g = torch.Generator().manual_seed(22)
    config = MixtralConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                           num_experts_per_tok=2, max_position_embeddings=32, output_router_logits=True,
                           router_aux_loss_coef=0.02)
    model = MixtralForCausalLM(config)
    data = markov_tokens(512, 16, 32, g)
    pick = sampler(512, 16, g)

    def batch():
        seq = data[pick()]
        return {"input_ids": seq, "labels": seq}

    return hf_fit("hf-mixtral", model, batch, 80, lr=3e-3)


def build_hf_vit() -> Built:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(23)
    g = torch.Generator().manual_seed(23)
    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, num_labels=4)
    model = ViTForImageClassification(config)
    images, labels = blob_images(512, 16, 3, g)
    pick = sampler(512, 32, g)

    def batch():
        i = pick()
        return {"pixel_values": images[i], "labels": labels[i]}

    return hf_fit("hf-vit", model, batch, 100, lr=5e-3)


def build_hf_t5() -> Built:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(24)
    g = torch.Generator().manual_seed(24)
    config = T5Config(vocab_size=32, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, decoder_start_token_id=0, pad_token_id=0)
    model = T5ForConditionalGeneration(config)
    cls = torch.randint(8, (512,), generator=g)
    src = torch.randint(2, 32, (512, 10), generator=g)
    src = torch.where(torch.rand(512, 10, generator=g) < 0.4, cls[:, None] * 3 + 2, src)  # a planted topic token
    target = torch.stack([cls * 3 + 2, cls * 3 + 3, cls * 3 + 4, torch.ones_like(cls)], 1)  # its "summary" + eos
    pick = sampler(512, 32, g)

    def batch():
        i = pick()
        return {"input_ids": src[i], "labels": target[i]}

    return hf_fit("hf-t5", model, batch, 80, lr=5e-3)


HF_BUILDERS: dict[str, Callable[[], Built]] = {
    "hf-bert": build_hf_bert, "hf-gpt2": build_hf_gpt2, "hf-mixtral": build_hf_mixtral, "hf-vit": build_hf_vit,
    "hf-t5": build_hf_t5,
}


@functools.lru_cache(maxsize=1)
def hf_corpus() -> dict[str, Built]:
    """The Hugging Face models by name (needs transformers), built once per process."""
    return {name: timed(name, builder) for name, builder in HF_BUILDERS.items()}
