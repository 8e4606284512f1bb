"""
The optimizers train_bio.py can use, as the original WiggleGPT offered them (optimizer_type):
adamw (the default), adamw8bit, lion (written here) and adafactor, each built by make_optimizer
over the model's parameter groups (GPT.parameter_groups), and freeze_layers, the original's way
to fine-tune only the top of the model. What each one is and the learning rate it wants:
README.md, "Train".
"""

import torch

from wigglegpt.common import UserError

OPTIMIZERS = ("adamw", "adamw8bit", "lion", "adafactor")


class Lion(torch.optim.Optimizer):
    """Lion: update = sign(beta1 * m + (1 - beta1) * g), then m = beta2 * m + (1 - beta2) * g,
    with decoupled weight decay p -= lr * weight_decay * p (as AdamW)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        if not lr >= 0.0:
            raise ValueError(f"Lion needs lr >= 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion needs betas in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, grad = state["exp_avg"], p.grad
                if weight_decay:
                    p.mul_(1.0 - lr * weight_decay)
                p.add_(torch.lerp(grad, m, beta1).sign_(), alpha=-lr)  # lerp: beta1 * m + (1 - beta1) * g
                m.lerp_(grad, 1.0 - beta2)  # beta2 * m + (1 - beta2) * g
        return loss


def freeze_layers(model, n):
    """Freeze as the original WiggleGPT's finetune_native.py did: the token embedding (and with it
    the output layer tied to it), the position table where there is one, and blocks 0 .. n-1. They
    get no gradients, so backward stops below block n and the optimizer holds no state for them.
    Returns (trainable, total) parameter counts."""
    blocks = model.transformer.h
    if not 0 <= n <= len(blocks):
        raise UserError(f"freeze_layers={n}, but the model has {len(blocks)} block{'s' * (len(blocks) != 1)}; "
                        f"use 0 .. {len(blocks)}")
    if n:
        frozen = [model.transformer.wte] + ([model.transformer.wpe] if "wpe" in model.transformer else [])
        for module in frozen + list(blocks[:n]):
            module.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def make_optimizer(model, optimizer_type, weight_decay, learning_rate, betas, device_type):
    """The optimizer optimizer_type names, over model.parameter_groups(weight_decay)."""
    if optimizer_type not in OPTIMIZERS:
        raise UserError(f"optimizer_type={optimizer_type!r}; use one of {', '.join(OPTIMIZERS)}")
    groups = model.parameter_groups(weight_decay)
    if optimizer_type == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=(device_type == "cuda"))
    if optimizer_type == "lion":
        return Lion(groups, lr=learning_rate, betas=betas)
    if optimizer_type == "adafactor":
        return torch.optim.Adafactor(groups, lr=learning_rate)
    if device_type != "cuda":  # checked first: importing bitsandbytes without CUDA prints warnings
        raise UserError(f"optimizer_type='adamw8bit' runs on CUDA GPUs only, not on {device_type}; "
                        "use optimizer_type='adamw' (or 'adafactor' for little optimizer memory)")
    try:
        import bitsandbytes
    except ImportError:
        raise UserError("optimizer_type='adamw8bit' needs bitsandbytes: pip install -r requirements-optional.txt "
                        "(or use optimizer_type='adamw')") from None
    return bitsandbytes.optim.AdamW8bit(groups, lr=learning_rate, betas=betas)
