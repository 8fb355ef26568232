"""The optimizer step the toy world's small trainings share (VAE, tagger): AdamW on a one-cycle schedule."""
from __future__ import annotations

from typing import Any


def one_cycle_adamw(params: Any, lr: float, steps: int, *, weight_decay: float = 0.01, warmup: float = 0.05) -> Any:
    import torch

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(2, steps),
                                                          pct_start=warmup)


def descend(loss: Any, optimizer: Any, schedule: Any, bar: Any) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    bar.advance(loss=f"{loss.item():.4f}")
