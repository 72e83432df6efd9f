"""One optimisation step of DANet; works on a plain model and on a DDP-wrapped one."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.losses import IGNORE_INDEX, danet_loss


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    ignore_index: int = IGNORE_INDEX,
    aux_weight: float = 0.4,
) -> dict[str, float]:
    """Forward, loss, backward, ``optimizer.step()``; returns the loss terms as floats.

    images: [B, 3, H, W] normalised; labels: [B, H, W] class indices (``ignore_index``
    marks unlabelled pixels). The caller sets ``model.train()``/``eval()``. Gradients stay
    in ``.grad`` after the step. With ``DistributedDataParallel`` the call goes through the
    wrapper, so gradients are averaged across processes.
    """
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    optimizer.zero_grad(set_to_none=True)
    outputs = model(images)
    losses = danet_loss(outputs, labels, net.align_corners, ignore_index, aux_weight)
    losses["loss"].backward()
    optimizer.step()
    return {name: value.item() for name, value in losses.items()}
