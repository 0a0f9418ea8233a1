"""Built-in fixes, one per file; importing this package registers them."""
from . import (  # noqa: F401
    aux_recon_loss, clamp_output, codebook_reset, codebook_resize, dropout, grad_clip, learnable_fourier, learnable_temperature,
    load_balance_loss, lora_all_towers, masked_loss, noisy_top_k, pre_ln, random_queries, router_z_loss, scale_up,
    warmup_cosine,
)
