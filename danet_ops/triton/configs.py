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

from danet_ops import env
from danet_ops.triton import interpreter_enabled

CONFIG_ENV = "DANET_OPS_TRITON_CONFIG"
FP32_ENV = "DANET_OPS_TRITON_FP32"
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


def fp32_exact_precision() -> str:
    """How fp32 products run where fp32 accuracy is required: ``"tf32x3"`` (default: three
    TF32 tensor-core products per product, error at the fp32 level) or ``"ieee"``
    (``DANET_OPS_TRITON_FP32=ieee``: exact FMA products, far slower on tensor-core GPUs)."""
    return env.choice(FP32_ENV)


def dot_precisions(dtype: torch.dtype) -> tuple[str, str]:
    """``input_precision`` of (the energy products, every other product) for inputs of ``dtype``.

    Energies (PAM's q·k, CAM's Gram and its gradient) are unscaled logits of magnitude ~50
    in DANet, where plain TF32 moves the softmax by percent: always fp32-accurate. The
    other products may use plain TF32 only when the user allowed it the PyTorch way
    (``torch.set_float32_matmul_precision("high")`` or ``"medium"``). Half inputs run
    tensor-core products with fp32 accumulation whatever the setting (the value is ignored).
    """
    if dtype != torch.float32:
        return "tf32", "tf32"
    exact = fp32_exact_precision()
    return exact, exact if torch.get_float32_matmul_precision() == "highest" else "tf32"


def n_bucket(n: int) -> int:
    """The autotuning key's stand-in for a length: its power-of-two bucket, so that every
    N does not get its own tuning run."""
    return triton.next_power_of_2(max(n, 1))


def config(warps: int, stages: int, **blocks: int) -> triton.Config:
    return triton.Config(blocks, num_warps=warps, num_stages=stages)


def _by_dtype(half: list, fp32: list, ieee: list, dtype_arg: str) -> Callable:
    """An ``early_config_prune``: the list for the dtype of argument ``dtype_arg`` (and, for
    fp32, for exact FMA products when any dot of the launch is "ieee")."""

    def prune(configs, named_args, **kwargs):
        arg = named_args[dtype_arg]
        dtype = getattr(arg, "base", arg).dtype  # a tensor, or a TMA descriptor of one
        if dtype in _HALF:
            chosen = half
        else:
            chosen = ieee if "ieee" in kwargs.values() else fp32
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
    ieee: Optional[list] = None, reset_to_zero: Optional[list] = None,
    pre_hook: Optional[Callable] = None,
) -> Callable:
    """Decorator for a ``@triton.jit`` kernel: autotuned on a GPU, one config in the interpreter.

    ``half``/``fp32`` are the candidate configs per input dtype (first = known-good);
    ``ieee`` those for fp32 with exact FMA dots (default: ``fp32``);
    ``dtype_arg`` names the kernel argument whose dtype picks the list. ``key`` should name
    the kernel's dot-precision constexprs too: TF32 and "ieee" tiles differ in registers
    and shared memory, so a choice made under one must not be reused under the other.
    ``pre_hook`` runs before each launch with the config's arguments (Triton then keeps no
    autotuning result on disk: a hook cannot be saved).
    """
    if interpreter_enabled():
        return triton.autotune(
            configs=[triton.Config(interpreter, num_warps=4, num_stages=1, pre_hook=pre_hook)],
            key=list(key), reset_to_zero=reset_to_zero)
    ieee = fp32 if ieee is None else ieee
    union = []
    for c in half + fp32 + ieee:
        if all(c is not u for u in union):
            union.append(c)
    if pre_hook is not None:
        hooked = {id(c): triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages,
                                       pre_hook=pre_hook) for c in union}
        half, fp32, ieee, union = ([hooked[id(c)] for c in cs] for cs in (half, fp32, ieee, union))

    def decorate(kernel):
        tuned = triton.autotune(
            configs=union, key=list(key), reset_to_zero=reset_to_zero,
            prune_configs_by={"early_config_prune": _by_dtype(half, fp32, ieee, dtype_arg)},
            cache_results=True,
        )(kernel)
        _TUNED.append(tuned)
        return tuned

    return decorate


def choices() -> list[tuple[str, tuple, str]]:
    """(kernel, autotune key, chosen config) for every choice made in this process."""
    return [(t.base_fn.__name__, key, str(config)) for t in _TUNED for key, config in t.cache.items()]
