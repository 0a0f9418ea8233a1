"""Cases for codec-roundtrip: collapsed, mis-decoding and healthy tokenizers.

The check runs only the codecs, so each subject's model is a trivial host: a 1x1 linear layer
plus the tokenizers as submodules (so that `Codec.module` names them and the codebook fixes apply).
"""
import math

import torch
from torch import nn

from modeldoctor import Subject, regression_subject
from modeldoctor.core.capabilities import Capabilities
from modeldoctor.nn.vq import PatchTokenizer, ScalarBinning


class CodecHost(nn.Module):
    """A trivial regression model x -> head(x) that carries tokenizers as submodules."""

    def __init__(self, **tokenizers: nn.Module):
        super().__init__()
        self.head = nn.Linear(1, 1)
        for name, tokenizer in tokenizers.items():
            self.add_module(name, tokenizer)

    def forward(self, x):  # (B, 1) -> (B, 1)
        return self.head(x)


def gratings(n: int, seed: int) -> torch.Tensor:
    """(n, 16, 16) smooth sinusoidal gratings in [0, 1] with random orientation, frequency and phase."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    f = torch.randint(1, 3, (n, 2, 1, 1), generator=g).float()
    phase = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    return 0.5 + 0.5 * torch.sin(math.pi * (f[:, 0] * xx + f[:, 1] * yy) + phase)


def sines(n: int, seed: int) -> torch.Tensor:
    """(n, 64) sinusoids with 1-4 cycles, random phase and a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, 64)
    f = torch.randint(1, 5, (n, 1), generator=g).float()
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    return torch.sin(2 * math.pi * f * t + phase) + 0.02 * torch.randn(n, 64, generator=g)


def host_subject(name: str, codecs: dict, **tokenizers: nn.Module) -> Subject:
    x = torch.linspace(0, 1, 16).unsqueeze(1)  # (16, 1)
    # Nothing in the host model reads the codes, so a codebook may grow freely (codebook-resize).
    dependents = {codec: [] for codec, spec in codecs.items() if spec.module}
    return regression_subject(name, CodecHost(**tokenizers), (x, x), (x, x), value_range=(0.0, 1.0), codecs=codecs,
                              capabilities=Capabilities(codebook_dependents=dependents))


def image_subject(tokenizer: PatchTokenizer, name: str) -> Subject:
    samples = list(gratings(64, seed=1).split(16))  # 4 held-out batches of (16, 16, 16)
    codec = {"image": tokenizer.codec(samples, module="image_tokenizer", value_range=(0.0, 1.0))}
    return host_subject(name, codec, image_tokenizer=tokenizer)


def case_collapsed_vq_image():
    """64 codes of 4x4 patches, all far from the data but two grey patches: 2 of 64 codes used."""
    torch.manual_seed(0)
    tokenizer = PatchTokenizer(64, patch=4)
    with torch.no_grad():
        codebook = tokenizer.quantizer.embedding.weight  # (64, 16)
        codebook.copy_(5.0 + torch.randn_like(codebook))
        codebook[0], codebook[1] = 0.25, 0.75
    return image_subject(tokenizer, "collapsed-vq-image")


def case_kmeans_vq_image():
    """The same tokenizer, its codebook k-means-initialised on training gratings."""
    torch.manual_seed(0)
    return image_subject(PatchTokenizer(64, patch=4).fit(gratings(256, seed=0)), "kmeans-vq-image")


class TransposedDecode(PatchTokenizer):
    """Decoder bug: it lays the (B, L/p, p) patches out channels-first, scrambling the signal."""

    def unpatch(self, z: torch.Tensor) -> torch.Tensor:
        return z.transpose(1, 2).reshape(z.shape[0], -1)


def signal_subject(tokenizer: PatchTokenizer, name: str) -> Subject:
    tokenizer.fit(sines(256, seed=0))
    samples = list(sines(64, seed=1).split(16))
    return host_subject(name, {"spectrum": tokenizer.codec(samples, module="spectrum_tokenizer")}, spectrum_tokenizer=tokenizer)


def case_signal_decoder_layout_bug():
    """A k-means VQ of 4-sample chunks whose decode transposes the chunk layout: correlation ~0."""
    torch.manual_seed(0)
    return signal_subject(TransposedDecode(64, patch=4, dims=1), "signal-layout-bug")


def case_kmeans_vq_signal():
    torch.manual_seed(0)
    return signal_subject(PatchTokenizer(64, patch=4, dims=1), "kmeans-vq-signal")


def redshifts() -> list[torch.Tensor]:
    """8 batches of 256 values uniform in [0, 3) (a redshift-like scalar)."""
    return list((torch.rand(2048, generator=torch.Generator().manual_seed(2)) * 3.0).split(256))


def case_scalar_binning_left_edges():
    """256 bins over [0, 3], but decode returns the bin's left edge instead of its centre."""
    binning = ScalarBinning(0.0, 3.0, 256)
    codec = binning.codec(redshifts())
    codec.decode = lambda codes: binning.low + codes.float() * binning.bin_width
    return host_subject("scalar-left-edges", {"redshift": codec})


def case_scalar_binning():
    return host_subject("scalar-binning", {"redshift": ScalarBinning(0.0, 3.0, 256).codec(redshifts())})
