"""Built-in fixes, one per file; importing this package registers them."""
from . import (  # noqa: F401
    aux_recon_loss, clamp_output, codebook_reset, codebook_resize, dropout, grad_clip, learnable_fourier, masked_loss,
    pre_ln, random_queries, scale_up, warmup_cosine,
)
