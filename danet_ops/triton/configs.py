"""Which launch configurations each Triton kernel may run: chosen here, in one place.

Every kernel gets two candidate lists, one for half inputs (fp16/bf16) and one for fp32,
because the same tiles cost very different registers: compiled for sm_90 with Triton's
ptxas at DANet's shapes (``benchmarks/results/static-sm90/``), the fp32 "ieee" dots spill
in almost every tile that is clean in bf16. A list holds only configs that compile without
spills and within the 227 KiB of shared memory a block may have; the first entry of each
list is the known-good one at DANet's shapes, the last the smallest tile.

The autotuner picks among the list for the call's dtype, keyed on the kernel's own key plus
the dot precisions, and keeps its choice on disk (``cache_results``), so a second process
compiles only the chosen configs. ``DANET_OPS_TRITON_CONFIG=first`` pins the first entry of
each list (no autotuning: one compile per kernel and dtype), for tests and quick runs;
``DANET_OPS_TRITON_CONFIG=K`` pins entry K (``benchmarks/gpu_headline.py`` compiles every
candidate in parallel processes that way before it autotunes).

Under the interpreter (``TRITON_INTERPRET=1``, no GPU) each kernel runs one fixed config:
the interpreter cannot autotune, and its cost is per program, not per tile size.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import torch
import triton

from danet_ops.triton import interpreter_enabled

CONFIG_ENV = "DANET_OPS_TRITON_CONFIG"
_HALF = (torch.float16, torch.bfloat16)
_TUNED: list = []  # every autotuner made here, for ``choices()``


def pinned_index() -> Optional[int]:
    """The candidate ``DANET_OPS_TRITON_CONFIG`` pins (``first`` = 0, or a number), or None
    to autotune (unset or ``autotune``)."""
    value = os.environ.get(CONFIG_ENV, "").strip().lower()
    if value in ("", "autotune"):
        return None
    if value == "first":
        return 0
    if value.isdigit():
        return int(value)
    raise ValueError(f"{CONFIG_ENV} must be 'autotune', 'first' or a candidate index, got {value!r}")


def config(warps: int, stages: int, **blocks: int) -> triton.Config:
    return triton.Config(blocks, num_warps=warps, num_stages=stages)


def _by_dtype(half: list, fp32: list, dtype_arg: str) -> Callable:
    """An ``early_config_prune``: the list for the dtype of argument ``dtype_arg``."""

    def prune(configs, named_args, **kwargs):
        dtype = named_args[dtype_arg].dtype
        chosen = half if dtype in _HALF else fp32
        index = pinned_index()
        if index is None:
            return chosen  # configs that fail to compile at odd shapes are skipped
        # Pinned: the first is known-good at DANet's Cqk = 64; the last (the smallest tile)
        # where q/k are wider than that (tests go to Cqk = 256). An index past the end of a
        # list pins its last entry.
        if kwargs.get("BLOCK_D", 0) > 64:
            return chosen[-1:]
        return [chosen[min(index, len(chosen) - 1)]]

    return prune


def autotune(
    *, half: list, fp32: list, interpreter: dict, key: Sequence[str], dtype_arg: str,
    reset_to_zero: Optional[list] = None,
) -> Callable:
    """Decorator for a ``@triton.jit`` kernel: autotuned on a GPU, one config in the interpreter.

    ``half``/``fp32`` are the candidate configs per input dtype (first = known-good);
    ``dtype_arg`` names the kernel argument whose dtype picks the list. ``key`` should name
    the kernel's dot-precision constexprs too: TF32 and "ieee" tiles differ in registers
    and shared memory, so a choice made under one must not be reused under the other.
    """
    if interpreter_enabled():
        return triton.autotune(configs=[triton.Config(interpreter, num_warps=4, num_stages=1)],
                               key=list(key), reset_to_zero=reset_to_zero)
    union = half + [c for c in fp32 if all(c is not h for h in half)]

    def decorate(kernel):
        tuned = triton.autotune(
            configs=union, key=list(key), reset_to_zero=reset_to_zero,
            prune_configs_by={"early_config_prune": _by_dtype(half, fp32, dtype_arg)},
            cache_results=True,
        )(kernel)
        _TUNED.append(tuned)
        return tuned

    return decorate


def choices() -> list[tuple[str, tuple, str]]:
    """(kernel, autotune key, chosen config) for every choice made in this process."""
    return [(t.base_fn.__name__, key, str(config)) for t in _TUNED for key, config in t.cache.items()]
