"""The backends' variants as benchmark rows (``--variants``): a row named
``<backend>[<variant>]`` runs that backend with the variant's environment, read by
``danet_ops.triton`` / ``danet_ops.cuda`` at each launch. A plain backend name is the
default of every switch. ``triton[deterministic]`` runs under
``torch.use_deterministic_algorithms(True)``, the one torch switch a kernel backend reads
(Triton's PAM backward then computes dQ in its own kernel instead of by atomics): its row
measures what that path costs, with torch's NaN fill of new tensors (a cost of the mode,
not of the kernels) left off."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator
from unittest import mock

import torch

# Not an environment variable: the key of a variant that turns torch's deterministic mode on.
DETERMINISTIC = "torch.use_deterministic_algorithms"
# Its rows up to the training crop (N = 8192) only: one shape states the cost, and a GPU run's
# budget is better spent on the larger shapes' targets.
DETERMINISTIC_MAX_N = 8192

VARIANTS = {
    "triton": {
        "fwd=two_pass": {"DANET_OPS_TRITON_PAM_FWD": "two_pass"},
        "loads=tma": {"DANET_OPS_TRITON_LOADS": "tma"},
        "bwd=fused": {"DANET_OPS_TRITON_PAM_BWD": "fused"},
        "fp32=ieee": {"DANET_OPS_TRITON_FP32": "ieee"},
        # cuBLAS refuses deterministic mode without a fixed workspace (no matmul runs in
        # the Triton path, but the benchmark's own checks may call one).
        "deterministic": {DETERMINISTIC: "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"},
    },
    "cuda": {
        "fwd=whole_cv": {"DANET_OPS_CUDA_PAM_FWD": "whole_cv"},
        "bwd=fused": {"DANET_OPS_CUDA_PAM_BWD": "fused"},
    },
}


def split(backend: str) -> tuple[str, dict]:
    """``"triton[bwd=fused]"`` -> ``("triton", {"DANET_OPS_TRITON_PAM_BWD": "fused"})``."""
    name, _, variant = backend.partition("[")
    return name, VARIANTS[name][variant.rstrip("]")] if variant else {}


@contextlib.contextmanager
def backend_of(cfg: dict) -> Iterator[dict]:
    """The config with its plain backend name, under its variant's environment (and
    deterministic mode where the variant asks for it)."""
    name, settings = split(cfg["backend"])
    env = {k: v for k, v in settings.items() if k != DETERMINISTIC}
    saved = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    with mock.patch.dict(os.environ, env):
        if DETERMINISTIC in settings:
            torch.use_deterministic_algorithms(True)
            torch.utils.deterministic.fill_uninitialized_memory = False
        try:
            yield dict(cfg, backend=name)
        finally:
            torch.use_deterministic_algorithms(saved)
            torch.utils.deterministic.fill_uninitialized_memory = fill


def with_variants(cfgs: list[dict]) -> list[dict]:
    """After each triton or cuda config, one per variant that changes something for it, each
    where it differs from the default alone (a GPU run has time for few rows: the 2026-11-28
    runbook measured 15): the forward variants (two-pass, TMA loads; CUDA's whole-v-width
    kernel in fp16/bf16) on PAM forward rows, the fused backwards on PAM fwd+bwd rows in
    fp16/bf16 (fp32 runs the default kernels anyway), exact FMA products on fp32 forward rows,
    deterministic mode on Triton PAM fwd+bwd rows up to N = 8192."""
    out = []
    for cfg in cfgs:
        out.append(cfg)
        fwd, half = cfg["mode"] == "fwd", cfg["dtype"] in ("fp16", "bf16")
        if cfg["backend"] == "cuda" and cfg["op"] == "pam" and half:
            out.append(dict(cfg, backend="cuda[fwd=whole_cv]" if fwd else "cuda[bwd=fused]"))
        if cfg["backend"] != "triton":
            continue
        if cfg["op"] == "pam" and fwd:
            out.append(dict(cfg, backend="triton[fwd=two_pass]"))
            out.append(dict(cfg, backend="triton[loads=tma]"))
        if cfg["op"] == "pam" and not fwd and half:
            out.append(dict(cfg, backend="triton[bwd=fused]"))
        if cfg["op"] == "pam" and not fwd and cfg["N"] <= DETERMINISTIC_MAX_N:
            out.append(dict(cfg, backend="triton[deterministic]"))
        if fwd and not half:
            out.append(dict(cfg, backend="triton[fp32=ieee]"))
    return out
