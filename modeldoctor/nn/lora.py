"""LoRA (Hu et al., 2021): a frozen linear layer plus a trainable low-rank update.

`LoRALinear` is an `nn.Linear` whose `weight` and `bias` stay frozen and keep their names, so a
state dict saved before wrapping still has every key it had (only `lora_a`, `lora_b` are added);
fixes that wrap layers can be replayed on load before the weights are loaded.

    y = x Wᵀ + b + (alpha / r) · x Aᵀ Bᵀ        A: (r, in), B: (out, r), B = 0 at init

so wrapping changes nothing until training moves B.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_RANK = 8
DEFAULT_ALPHA = 16.0  # scale alpha / r = 2, a common PEFT setting for r = 8


class LoRALinear(nn.Linear):
    """A frozen `nn.Linear` (same `weight`, `bias`) with a trainable rank-r update `lora_b @ lora_a`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rank: int = DEFAULT_RANK,
                 alpha: float = DEFAULT_ALPHA, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))  # (r, in)
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA) -> LoRALinear:
        """A LoRALinear carrying a copy of `linear`'s weight and bias (frozen)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, rank=rank, alpha=alpha,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        update = F.linear(F.linear(x, self.lora_a), self.lora_b)  # (..., r) -> (..., out)
        return F.linear(x, self.weight, self.bias) + self.scaling * update

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


def wrap_lora(model: nn.Module, prefix: str = "", *, rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA,
              only_frozen: bool = False) -> list[str]:
    """Replace every plain nn.Linear under module `prefix` ("" = the whole model) with a LoRALinear, in place.

    only_frozen: wrap only layers whose weight is not trainable (leave fine-tuned layers alone).
    The root module itself cannot be replaced in place and is never wrapped. Returns the qualified names of the wrapped layers.
    """
    targets = [(name, module) for name, module in model.named_modules()
               if name and type(module) is nn.Linear and (not prefix or name == prefix or name.startswith(prefix + "."))
               and not (only_frozen and module.weight.requires_grad)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoRALinear.from_linear(linear, rank, alpha))
    return [name for name, _ in targets]


def has_lora(module: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in module.modules())
