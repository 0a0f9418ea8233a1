"""codebook-reset: restart dead VQ codes from encoder outputs (or k-means a collapsed codebook)."""
from __future__ import annotations

import torch

from ..core.errors import InputError
from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject
from ..nn.vq import kmeans
from ..probes.codebooks import codec_targets, rebind, survey

KMEANS_BELOW = 0.10  # share of codes used below which the whole codebook is k-means initialised
NOISE = 0.01  # restarted codes: a random latent plus this × the latents' per-dimension std


@register_fix
class CodebookReset(Fix):
    """Codebook reset: move dead codes onto encoder outputs and turn on dead-code restarts.

    What it changes
    For every codec that follows the codebook protocol (see `modeldoctor.vq`: `Codec.module`
    names a module whose bound `encode`/`decode` the codec uses, holding a (K, D) codebook), it
    runs the codec over its samples while recording the latents that reach the quantizer, then:
    codes never used are moved onto random latents (plus 1% noise), or, when fewer than 10% of
    the codes are used, the whole codebook is k-means initialised on the latents (10 Lloyd
    iterations). It also sets `restart_dead_codes = True` on the quantizer when it has that flag,
    so a well-behaved VQ module (like `modeldoctor.vq.VectorQuantizer`) keeps restarting codes
    whose EMA count falls below `dead_code_threshold` during training. Shapes and names are kept.
    The round trip improves at once; a downstream model trained on the old tokens must be
    retrained (k-means moves the live codes too), and the restarts act only in training. The
    latents come from the codec's samples: declare training-like samples for an honest eval.

    Why
    Codes initialised far from the data never win a nearest-neighbour lookup, get no gradient and
    stay dead; the encoder then squeezes everything into a few codes (Jukebox: "random
    restarts"; SoundStream: k-means init and expiring stale codes). The seed's astro codecs
    round-tripped poorly ("Check codecs are working: test encode-decode cycle"); the reset makes
    the round trip use the codebook at once.
    """

    slug = "codebook-reset"
    kind = "surgery"
    needs_retraining = True
    seed = "000"

    def applicable(self, subject: Subject) -> str | None:
        targets, reasons = codec_targets(subject)
        if targets:
            return None
        return "; ".join(reasons) if reasons else "the subject declares no codecs (capability `codecs`)"

    def apply(self, subject: Subject) -> None:
        generator = torch.Generator().manual_seed(0)
        for target in codec_targets(subject)[0]:
            rebind(subject, target)  # encode/decode must run on this copy's module
            counts, latents = survey(target)
            codebook = target.codebook  # (K, D)
            if not len(latents) or latents.shape[1] != codebook.shape[1]:
                raise InputError(f"codebook-reset: codec '{target.name}' passed no latents of width "
                                 f"{codebook.shape[1]} to its quantizer's encode(z) or forward(z)")
            dead = counts == 0
            with torch.no_grad():
                if (~dead).float().mean() < KMEANS_BELOW:
                    codebook.copy_(kmeans(latents, len(codebook), 10, generator))
                elif dead.any():
                    rows = torch.randint(len(latents), (int(dead.sum()),), generator=generator)
                    noise = torch.randn(len(rows), latents.shape[1], generator=generator) * latents.std(0).nan_to_num(0.0) * NOISE
                    codebook[dead] = (latents[rows] + noise).to(codebook.dtype)
            if hasattr(target.quantizer, "restart_dead_codes"):
                target.quantizer.restart_dead_codes = True
