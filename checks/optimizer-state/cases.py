"""Cases for optimizer-state: tiny models trained a few dozen steps by real torch optimizers, saved with their state.

Each case returns the model's state dict with the optimizer's (and scheduler's) `state_dict()`, as a
training checkpoint holds them. `Net` has a BatchNorm, so its state dict has buffers the optimizer
does not hold.
"""
import torch
from torch import nn

from modeldoctor import Weights

STEPS = 30


class Net(nn.Module):
    def __init__(self, extra: str = ""):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 1)
        self.extra = extra
        if extra == "unused":
            self.aux = nn.Linear(16, 16)  # built, never called in forward
        if extra in ("zero", "branch"):
            self.gate = nn.Parameter(torch.ones(16))

    def forward(self, x, step: int = 0):  # (B, 4) -> (B, 1)
        h = self.body(x)
        if self.extra == "zero":
            h = h + 0.0 * self.gate  # the DDP "touch every param" trick: a gradient, always exactly 0
        if self.extra == "branch" and step % 4 == 0:
            h = h * self.gate  # a branch taken on one step in four
        return self.head(h)


def train(model, optimizer, scheduler=None, steps=STEPS) -> Weights:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = torch.sin(x).sum(-1, keepdim=True)
    for step in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x, step), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return Weights.from_state_dict(model.state_dict(), optimizer=optimizer.state_dict(),
                                   scheduler=None if scheduler is None else scheduler.state_dict())


def net(extra: str = "") -> Net:
    torch.manual_seed(0)
    return Net(extra)


def case_healthy_adam():
    model = net()
    return train(model, torch.optim.Adam(model.parameters(), lr=3e-3))


def case_healthy_sgd_momentum():
    model = net()
    return train(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))


def case_sgd_without_momentum():
    model = net()
    return train(model, torch.optim.SGD(model.parameters(), lr=0.05))


def case_optimizer_over_head_only():
    model = net()
    return train(model, torch.optim.Adam(model.head.parameters(), lr=3e-3))


def case_param_never_used_in_forward():
    model = net("unused")
    return train(model, torch.optim.Adam(model.parameters(), lr=3e-3))


def case_param_with_only_zero_gradients():
    model = net("zero")
    return train(model, torch.optim.Adam(model.parameters(), lr=3e-3))


def case_rarely_taken_branch():
    model = net("branch")
    return train(model, torch.optim.Adam(model.parameters(), lr=3e-3))


def case_group_with_lr_zero_from_start():
    model = net()
    groups = [{"params": model.body.parameters(), "lr": 0.0}, {"params": model.head.parameters()}]
    return train(model, torch.optim.Adam(groups, lr=3e-3))


def case_cosine_schedule_finished_at_zero():
    model = net()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    return train(model, optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS))


def case_steplr_never_moved():
    model = net()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    return train(model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1000))


def case_named_parameters_with_weight_decay_split():
    model = net()
    named = list(model.named_parameters())
    groups = [{"params": [(n, p) for n, p in named if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [(n, p) for n, p in named if p.dim() < 2], "weight_decay": 0.0}]
    return train(model, torch.optim.AdamW(groups, lr=3e-3))


def case_weight_decay_split_without_names():
    model = net()
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return train(model, torch.optim.AdamW(groups, lr=3e-3))


def case_two_groups_in_non_model_order():
    model = net()
    groups = [{"params": model.head.parameters(), "lr": 3e-3}, {"params": model.body.parameters(), "lr": 1e-3}]
    return train(model, torch.optim.Adam(groups))


def case_embedding_resized_after_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    tokens = torch.randint(0, 10, (32,))
    for _ in range(5):
        optimizer.zero_grad()
        model(tokens).square().mean().backward()
        optimizer.step()
    model[0] = nn.Embedding(12, 8)  # vocabulary grown; the optimizer still holds the old table
    for _ in range(10):
        optimizer.zero_grad()
        model(tokens).square().mean().backward()
        optimizer.step()
    return Weights.from_state_dict(model.state_dict(), optimizer=optimizer.state_dict())
