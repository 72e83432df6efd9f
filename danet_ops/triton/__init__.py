"""The ``triton`` backend: fused Triton kernels for PAM and CAM (contract: ``danet_ops.backends``).

Kernels live one op per file (``pam.py``, ``cam.py``) and are imported on first call, so
importing danet_ops never needs Triton. On a machine without a GPU the kernels run under
Triton's interpreter when ``TRITON_INTERPRET=1`` is set before they are imported.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(device: torch.device) -> Optional[str]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton; CUDA builds of torch on Linux ship it)"
    if device.type == "cuda" or (device.type == "cpu" and interpreter_enabled()):
        return None
    return "Triton kernels need CUDA tensors (or CPU tensors under TRITON_INTERPRET=1)"


def _on(device: torch.device):
    """Launch on the tensors' GPU: Triton launches on the current device, not the tensors'."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def pam_forward(q, k, v, gamma, residual, scale, save_o):
    from danet_ops.triton.pam import pam_forward as run

    with _on(q.device):
        return run(q, k, v, gamma, residual, scale, save_o)


def pam_backward(dout, q, k, v, gamma, o, lse, scale):
    from danet_ops.triton.pam import pam_backward as run

    with _on(q.device):
        return run(dout, q, k, v, gamma, o, lse, scale)


def cam_forward(x, gamma):
    from danet_ops.triton.cam import cam_forward as run

    with _on(x.device):
        return run(x, gamma)


def cam_backward(dout, x, attn, gamma):
    from danet_ops.triton.cam import cam_backward as run

    with _on(x.device):
        return run(dout, x, attn, gamma)
