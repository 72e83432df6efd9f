"""The package's environment switches (kernel variants, read at each launch): one table of
their names, values and meaning, read by the backends (``choice``) and shown by
``python -m danet_ops``."""
from __future__ import annotations

import os
from typing import NamedTuple


class Switch(NamedTuple):
    options: tuple[str, ...]  # the first is the default
    what: str


SWITCHES = {
    "DANET_OPS_TRITON_PAM_FWD": Switch(
        ("online", "two_pass"),
        "Triton PAM forward: one online-softmax kernel per (query block, v block), or the "
        "log-sum-exp first and then exactly normalised P"),
    "DANET_OPS_TRITON_PAM_BWD": Switch(
        ("split", "fused"),
        "Triton PAM backward: a dV kernel and a dK/dQ kernel, or one kernel per key block "
        "with P and dS once per tile pair (fp16/bf16, Cv <= 512; dQ by atomics)"),
    "DANET_OPS_TRITON_LOADS": Switch(
        ("pointer", "tma"),
        "how the Triton PAM forwards read q, k, v: masked pointer loads, or tensor "
        "descriptors copied by the TMA unit (sm_90+)"),
    "DANET_OPS_TRITON_FP32": Switch(
        ("tf32x3", "ieee"),
        "fp32-accurate Triton products: 3xTF32 on tensor cores, or exact FMA products"),
    "DANET_OPS_CUDA_PAM_FWD": Switch(
        ("cv_blocks", "whole_cv"),
        "CUDA PAM forward: one block per 64 queries and 128 v channels, or per 32 queries "
        "and all v channels (fp16/bf16, Cqk <= 64, Cv <= 512)"),
    "DANET_OPS_CUDA_PAM_BWD": Switch(
        ("split", "fused"),
        "CUDA PAM backward: dV and dK/dQ kernels, or one kernel per 32-key tile (fp16/bf16, "
        "Cqk <= 64, Cv <= 512; dQ by atomics)"),
}
# Under torch.use_deterministic_algorithms(True) both backward switches read "split".


def choice(name: str) -> str:
    """The value of switch ``name`` (``SWITCHES``): its default when unset or empty (case and
    surrounding spaces ignored), else a ValueError that names the variable."""
    options = SWITCHES[name].options
    value = os.environ.get(name, "").strip().lower() or options[0]
    if value not in options:
        allowed = " or ".join(repr(o) for o in options)
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value
