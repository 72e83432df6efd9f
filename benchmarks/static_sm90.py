"""sm_90 static resources of every Triton kernel config, compiled without a GPU.

``python -m benchmarks.static_sm90`` compiles each GPU autotune config of each Triton kernel
in ``danet_ops/triton/`` for sm_90 (H100/H200) at DANet's shapes (B=2, Cqk=64, Cv=512,
N=8192; CAM C=512, gamma and residual on, o saved for backward), in fp32 under the default
"highest" matmul precision, fp32 under ``torch.set_float32_matmul_precision("high")``
(column ``fp32-high``), fp16 and bf16, and writes per kernel/config/dtype the registers,
spill stores/loads, stack frame and shared memory, and whether the shared memory exceeds
the 232448 bytes a block may have on sm_90, to
``benchmarks/results/static-sm90/triton-<version>.{md,csv}``. ``tests/test_sm90_static.py``
runs the same code and fails on spills and shared-memory overflows.

How, without a GPU:

* What is compiled comes from the code itself. Each worker process runs the backend's own
  launchers (``danet_ops.triton.pam_forward``/``pam_backward`` with and without
  ``torch.use_deterministic_algorithms``, ``cam_forward``/``cam_backward``) on meta
  tensors of DANet's shapes, with ``Autotuner.run`` and ``JITFunction.run`` replaced by
  recorders. Every launch is recorded with its arguments and constexprs exactly as the
  launch code passes them; the configs are what the recorded autotuner would try for those
  arguments (``Autotuner.prune_configs``: its ``configs`` list, after an
  ``early_config_prune`` if it has one). CAM sizes its split-K grid from the device's SM
  count, so ``torch.cuda`` answers as an sm_90 device with 132 SMs.
* Each (launch, config) is compiled with ``JITFunction.run(..., warmup=True)`` (Triton's own
  argument specialization, compile and no launch) against a stand-in driver whose target is
  ``GPUTarget("cuda", 90, 32)``. Triton's bundled ptxas runs with ``-v``; its log
  (``TRITON_DUMP_PTXAS_LOG``) gives registers, spills and stack; shared memory is the
  compiled kernel's ``metadata.shared``. Triton fills register and spill counts itself only
  when it loads a kernel onto a GPU.
* Compiles run in a pool of processes (default: one per core) with a per-compile timeout;
  a worker past its time is killed with its ptxas, and the row says ``timeout``. Compiles
  use a private, temporary Triton cache, so every number comes from a fresh ptxas run.
  Each row records the compile's wall time and its CPU time (worker + ptxas); the CPU
  time is what to budget with, since wall time on a shared machine follows its load.

Labels: a kernel is named by its function (``_pam_fwd_kernel`` -> ``pam_fwd``, CAM's
``_gram_kernel`` -> ``cam_gram``) plus, where the launch code starts it with different
constexprs, those values (``cam_gram[SYMMETRIC=True]``). A config is named by its
constexprs without ``BLOCK_`` and ``w<num_warps> s<num_stages>``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results" / "static-sm90"

#: Shared memory one thread block may use on sm_90 (H100/H200: 227 KiB, opt-in).
SMEM_LIMIT = 232448
#: H100 SXM and H200: what CAM's split-K sizing reads from the device.
SM90_SM_COUNT = 132
#: DANet's shapes: batch 2 at the Cityscapes training crop (64x128 features), C = 512.
SHAPES = {"B": 2, "CQK": 64, "CV": 512, "N": 8192, "C": 512}
#: Column name -> (input dtype, torch.get_float32_matmul_precision during the launch).
VARIANTS = {
    "fp32": ("float32", "highest"),
    "fp32-high": ("float32", "high"),
    "fp16": ("float16", "highest"),
    "bf16": ("bfloat16", "highest"),
}
DEFAULT_TIMEOUT_S = 300.0
#: Worker start (imports) and recording the launches, which every sweep does once first.
ENUMERATE_TIMEOUT_S = 180.0
CSV_COLUMNS = [
    "kernel", "config", "dtype", "status", "registers", "spill_stores", "spill_loads",
    "stack_bytes", "shared_bytes", "exceeds_shared", "spills", "compile_s", "compile_cpu_s",
]


@dataclass
class Row:
    """One compile: ``kernel`` / ``config`` / ``dtype`` (a VARIANTS key) and what ptxas said."""

    kernel: str
    config: str
    dtype: str
    status: str = "pending"  # "ok", "timeout (> N s)", "not started: ..." or "error: ..."
    registers: Optional[int] = None
    spill_stores: Optional[int] = None
    spill_loads: Optional[int] = None
    stack_bytes: Optional[int] = None
    shared_bytes: Optional[int] = None
    compile_s: Optional[float] = None  # wall time of the compile
    compile_cpu_s: Optional[float] = None  # CPU time (worker + ptxas): load-independent

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def spills(self) -> bool:
        return bool(self.spill_stores or self.spill_loads)

    @property
    def exceeds_shared(self) -> bool:
        return self.shared_bytes is not None and self.shared_bytes > SMEM_LIMIT

    @property
    def clean(self) -> bool:
        """Compiled, no spill, fits shared memory: a config the autotuner may keep."""
        return self.ok and not self.spills and not self.exceeds_shared

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kernel, self.config, self.dtype)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(exceeds_shared=self.exceeds_shared if self.ok else None,
                 spills=self.spills if self.ok else None)
        return d


# ---------------------------------------------------------------- availability


def triton_ptxas() -> Optional[str]:
    """The ptxas Triton runs for sm_90 (its bundled one unless TRITON_PTXAS_PATH says otherwise)."""
    try:
        import triton
    except ImportError:
        return None
    path = None
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(90).path
    except Exception:  # older or newer Triton without get_ptxas(arch).path
        path = Path(triton.__file__).resolve().parent / "backends" / "nvidia" / "bin" / "ptxas"
    return str(path) if path and Path(path).is_file() and os.access(path, os.X_OK) else None


def unavailable_reason() -> Optional[str]:
    """Why this machine cannot compile for sm_90 with Triton's ptxas, or None if it can."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError as exc:
        return f"triton has no NVIDIA backend ({exc})"
    ptxas = triton_ptxas()
    if ptxas is None:
        return "Triton's bundled ptxas (triton/backends/nvidia/bin/) is missing"
    try:
        subprocess.run([ptxas, "--version"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"Triton's bundled ptxas does not run: {exc}"
    return None


def versions() -> dict:
    import torch
    import triton

    ptxas = triton_ptxas()
    ptxas_version = "?"
    if ptxas:
        out = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"release ([\d.]+), (V[\d.]+)", out)
        ptxas_version = f"{m.group(1)} ({m.group(2)})" if m else out.strip().splitlines()[-1]
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return {"triton": triton.__version__, "torch": torch.__version__, "ptxas": ptxas_version,
            "git": rev or "?", "date": datetime.date.today().isoformat()}


# ---------------------------------------------------------------- inside a worker
#
# Everything below until the pool runs in worker processes only: they import the kernel
# modules with TRITON_INTERPRET unset (the test session sets it) and replace Triton's
# driver and parts of torch.cuda for good.


class _Sm90Driver:
    """Triton's active driver as far as compiling needs it: an sm_90 target, no device."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("meta")


def _pretend_sm90_torch_cuda() -> None:
    """torch.cuda as launch code sees it on one sm_90 device (capability, SM count, index)."""
    import types

    import torch

    props = types.SimpleNamespace(
        name="sm_90 (static)", major=9, minor=0, multi_processor_count=SM90_SM_COUNT,
        total_memory=80 * 2**30, shared_memory_per_block_optin=SMEM_LIMIT,
    )
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    torch.cuda.get_device_properties = lambda device=None: props
    torch.cuda.current_device = lambda: 0
    torch.cuda.device = lambda device=None: contextlib.nullcontext()
    torch.cuda.device_of = lambda obj=None: contextlib.nullcontext()


_WORKER_READY = False


def _worker_setup() -> None:
    global _WORKER_READY
    if _WORKER_READY:
        return
    os.environ.pop("TRITON_INTERPRET", None)
    # Every config of every list: a pin to one config (DANET_OPS_TRITON_CONFIG) is not the
    # list the autotuner would try.
    os.environ.pop("DANET_OPS_TRITON_CONFIG", None)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    from triton.runtime.driver import driver

    driver.set_active(_Sm90Driver())
    _pretend_sm90_torch_cuda()
    _WORKER_READY = True


def _python_fn(kernel):
    """The Python function under an Autotuner / Heuristics / JITFunction."""
    import inspect

    fn = kernel
    while not inspect.isfunction(fn):
        fn = fn.fn
    return fn


def _base_label(fn) -> str:
    """``_pam_fwd_kernel`` -> ``pam_fwd``; a name without its module's prefix gets it."""
    name = re.sub(r"_kernel$", "", fn.__name__.lstrip("_"))
    module = fn.__module__.rsplit(".", 1)[-1]
    return name if name.startswith(module + "_") else f"{module}_{name}"


def _is_option(name: str) -> bool:
    return name in ("num_warps", "num_stages", "num_ctas", "maxnreg", "debug", "enable_fp_fusion")


def _value_key(v) -> str:
    """A compile-relevant fingerprint of one launch argument."""
    if hasattr(v, "data_ptr") and hasattr(v, "dtype"):
        return f"T({v.dtype},{tuple(v.shape)},{tuple(v.stride())})"
    return repr(v)


@dataclass
class _Launch:
    fn_name: str
    base: str
    kernel: object  # Autotuner, or the JITFunction / Heuristics launched directly
    autotuned: bool
    args: tuple
    kwargs: dict


def _record_launches(run: Callable[[], object]) -> list[_Launch]:
    """Run ``run()`` with every Triton launch recorded instead of executed."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    launches: list[_Launch] = []

    def record(kernel, args, kwargs, autotuned):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
        fn = _python_fn(kernel)
        launches.append(_Launch(fn.__name__, _base_label(fn), kernel, autotuned, tuple(args), kwargs))

    def autotuner_run(self, *args, **kwargs):
        record(self, args, kwargs, True)

    def jit_run(self, *args, grid=None, warmup=False, **kwargs):
        record(self, args, kwargs, False)

    saved = Autotuner.run, JITFunction.run
    Autotuner.run, JITFunction.run = autotuner_run, jit_run
    try:
        run()
    finally:
        Autotuner.run, JITFunction.run = saved
    return launches


def _danet_launches(variant: str) -> list[_Launch]:
    """Every Triton launch of PAM and CAM forward+backward at DANet's shapes, in one variant.

    Meta tensors: shapes, strides and dtypes as in a real step, no memory. PAM forward
    runs in each variant (online, two_pass; pointer and TMA loads), PAM backward in each (split, fused), with
    atomic and deterministic dQ; fp32 runs once more with exact FMA dots.
    """
    import torch

    import danet_ops.triton as backend

    dtype_name, precision = VARIANTS[variant]
    dtype = getattr(torch, dtype_name)
    b, cqk, cv, n, c = (SHAPES[k] for k in ("B", "CQK", "CV", "N", "C"))

    def t(*shape, dt=dtype):
        return torch.empty(shape, device="meta", dtype=dt)

    def step():
        q, k, v, x = t(b, cqk, n), t(b, cqk, n), t(b, cv, n), t(b, cv, n)
        gamma = t(dt=torch.float32)  # mmseg's Scale: an fp32 0-dim parameter
        for fwd in ("online", "two_pass"):  # every PAM forward variant (DANET_OPS_TRITON_PAM_FWD)
            for loads in ("tma", "pointer"):  # with TMA and pointer loads (DANET_OPS_TRITON_LOADS)
                os.environ["DANET_OPS_TRITON_PAM_FWD"] = fwd
                os.environ["DANET_OPS_TRITON_LOADS"] = loads
                out, lse, o = backend.pam_forward(q, k, v, gamma, x, 1.0, True)
        os.environ.pop("DANET_OPS_TRITON_PAM_FWD")
        os.environ.pop("DANET_OPS_TRITON_LOADS")
        dout = t(b, cv, n)
        for bwd in ("split", "fused"):  # every PAM backward variant (DANET_OPS_TRITON_PAM_BWD)
            os.environ["DANET_OPS_TRITON_PAM_BWD"] = bwd
            for deterministic in (False, True):
                torch.use_deterministic_algorithms(deterministic)
                backend.pam_backward(dout, q, k, v, gamma, o, lse, 1.0)
        os.environ.pop("DANET_OPS_TRITON_PAM_BWD")
        torch.use_deterministic_algorithms(False)
        xc = t(b, c, n)
        out, attn = backend.cam_forward(xc, gamma)
        backend.cam_backward(t(b, c, n), xc, attn, gamma)

    def run():
        saved_precision = torch.get_float32_matmul_precision()
        saved_determinism = torch.are_deterministic_algorithms_enabled()
        torch.set_float32_matmul_precision(precision)
        try:
            step()
            if dtype == torch.float32:  # and with exact FMA dots (DANET_OPS_TRITON_FP32=ieee)
                os.environ["DANET_OPS_TRITON_FP32"] = "ieee"
                step()
        finally:
            os.environ.pop("DANET_OPS_TRITON_FP32", None)
            torch.set_float32_matmul_precision(saved_precision)
            torch.use_deterministic_algorithms(saved_determinism)

    return _record_launches(run)


def _launch_fingerprint(launch: _Launch) -> str:
    args = ",".join(_value_key(a) for a in launch.args)
    kwargs = ",".join(f"{k}={_value_key(v)}" for k, v in sorted(launch.kwargs.items()))
    return f"{launch.fn_name}({args};{kwargs})"


def _configs(launch: _Launch) -> list:
    """The configs the autotuner would try for this launch; a direct launch is its own."""
    from triton import Config

    if launch.autotuned:
        tuner = launch.kernel
        tuner.nargs = dict(zip(tuner.arg_names, launch.args))
        try:
            return list(tuner.prune_configs(dict(launch.kwargs)))
        finally:
            tuner.nargs = None
    blocks = {k: v for k, v in launch.kwargs.items() if k.startswith("BLOCK")}
    return [Config(blocks, num_warps=launch.kwargs.get("num_warps", 4),
                   num_stages=launch.kwargs.get("num_stages", 3))]


def _config_label(config) -> str:
    parts = [f"{re.sub(r'^BLOCK_', '', k)}{v}" for k, v in config.kwargs.items()]
    parts += [f"w{config.num_warps}", f"s{config.num_stages}"]
    if getattr(config, "num_ctas", 1) not in (None, 1):
        parts.append(f"ctas{config.num_ctas}")
    if getattr(config, "maxnreg", None):
        parts.append(f"maxnreg{config.maxnreg}")
    return " ".join(parts)


_LAUNCH_CACHE: dict = {}


def _variant_launches(variant: str) -> list[_Launch]:
    if variant not in _LAUNCH_CACHE:
        _LAUNCH_CACHE[variant] = _danet_launches(variant)
    return _LAUNCH_CACHE[variant]


def _selectors(launches: list[_Launch]) -> dict[str, list[str]]:
    """Per function: the constexpr names whose values tell its launches apart."""
    by_fn: dict[str, list[_Launch]] = {}
    for launch in launches:
        by_fn.setdefault(launch.fn_name, []).append(launch)
    keys = {}
    for name, group in by_fn.items():
        names = sorted({k for launch in group for k in launch.kwargs if not _is_option(k)})
        keys[name] = [k for k in names
                      if len({repr(launch.kwargs.get(k)) for launch in group}) > 1]
    return keys


def _label(launch: _Launch, selector_keys: list[str]) -> tuple[str, dict]:
    select = {k: launch.kwargs.get(k) for k in selector_keys}
    if not select:
        return launch.base, {}
    return launch.base + "[" + ",".join(f"{k}={v}" for k, v in select.items()) + "]", select


def _module_kernels() -> dict[str, str]:
    """Every ``*_kernel`` @triton.jit function of the kernel modules: name -> label."""
    from triton.runtime.jit import KernelInterface

    import danet_ops.triton.cam as cam
    import danet_ops.triton.pam as pam

    found = {}
    for module in (pam, cam):
        for value in vars(module).values():
            if isinstance(value, KernelInterface):
                fn = _python_fn(value)
                if fn.__name__.endswith("_kernel") and fn.__module__ == module.__name__:
                    found[fn.__name__] = _base_label(fn)
    return found


def _enumerate(variants: list[str]) -> dict:
    """Every (variant, launch, config) to compile, as plain dicts for the parent, and the
    labels of kernels the modules define but the launch code never started."""
    _worker_setup()
    per_variant = {v: _variant_launches(v) for v in variants}
    selector_keys: dict[str, set] = {}
    for launches in per_variant.values():
        for name, keys in _selectors(launches).items():
            selector_keys.setdefault(name, set()).update(keys)
    tasks, seen = [], set()
    for variant, launches in per_variant.items():
        for launch in launches:
            label, select = _label(launch, sorted(selector_keys.get(launch.fn_name, ())))
            if (variant, label) in seen:  # the same launch again (e.g. both backward paths)
                continue
            seen.add((variant, label))
            fingerprint = _launch_fingerprint(launch)
            for i, config in enumerate(_configs(launch)):
                config_label = _config_label(config)
                tasks.append(dict(variant=variant, kernel=label, fn_name=launch.fn_name,
                                  select=select, config=config_label, config_index=i,
                                  dedupe=f"{fingerprint}|{config_label}"))
    launched = {launch.fn_name for launches in per_variant.values() for launch in launches}
    unlaunched = sorted(label for name, label in _module_kernels().items() if name not in launched)
    return {"tasks": tasks, "unlaunched": unlaunched}


def _find_launch(variant: str, fn_name: str, select: dict) -> _Launch:
    for launch in _variant_launches(variant):
        if launch.fn_name == fn_name and all(launch.kwargs.get(k) == v for k, v in select.items()):
            return launch
    raise LookupError(f"no launch of {fn_name} with {select} in {variant}")


_PTXAS_RE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "stores": re.compile(r"(\d+) bytes spill stores"),
    "loads": re.compile(r"(\d+) bytes spill loads"),
}


def parse_ptxas_log(log: str) -> Optional[dict]:
    """registers / spill_stores / spill_loads / stack_bytes from ``ptxas -v``; None if absent."""
    found = {k: r.search(log) for k, r in _PTXAS_RE.items()}
    if not found["registers"]:
        return None
    get = lambda k: int(found[k].group(1)) if found[k] else 0  # noqa: E731
    return {"registers": get("registers"), "spill_stores": get("stores"),
            "spill_loads": get("loads"), "stack_bytes": get("stack")}


def _ptxas_v(ptx: str) -> str:
    """Run Triton's ptxas -v on PTX ourselves (when Triton printed no log)."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([triton_ptxas(), "-lineinfo", "-v", "--gpu-name=sm_90a", str(src),
                               "-o", str(Path(d) / "k.cubin")], capture_output=True, text=True)
        return proc.stderr + proc.stdout


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _compile_launch(launch: _Launch, config_index: int):
    """The launch compiled for sm_90 (no run) with the autotuner's config ``config_index``."""
    kwargs = dict(launch.kwargs)
    fn = launch.kernel
    if launch.autotuned:
        fn = launch.kernel.fn
        config = _configs(launch)[config_index]
        kwargs.update(config.all_kwargs())
        if config.pre_hook is not None:  # e.g. the TMA descriptors' block shapes
            config.pre_hook({**dict(zip(fn.arg_names, launch.args)), **kwargs})
    return fn.run(*launch.args, grid=(1, 1, 1), warmup=True, **kwargs)


def _compile(task: dict) -> dict:
    """Compile one config for sm_90; the Row fields it fills."""
    _worker_setup()
    launch = _find_launch(task["variant"], task["fn_name"], task["select"])
    log = io.StringIO()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    with contextlib.redirect_stdout(log):
        compiled = _compile_launch(launch, task["config_index"])
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    stats = parse_ptxas_log(log.getvalue()) or parse_ptxas_log(_ptxas_v(compiled.asm["ptx"]))
    if stats is None:
        raise RuntimeError("ptxas -v printed no register count")
    return dict(status="ok", shared_bytes=int(compiled.metadata.shared),
                compile_s=round(wall, 2), compile_cpu_s=round(cpu, 2), **stats)


# A 16-byte cp.async in PTX: cp.async.cg.shared.global [dst], [src], 16 (or 0x10).
_ASYNC_COPY_16 = re.compile(
    r"cp\.async\.c[ag]\.shared\.global\S*\s*\[[^\]]*\],\s*\[[^\]]*\],\s*(?:16|0x10)\b")


def async_copies(n: int, variant: str = "bf16") -> dict[str, int]:
    """Per autotuned kernel launched with pointer loads: how many 16-byte ``cp.async`` the
    PTX of its first config holds, compiled for sm_90 at DANet's shapes but N = ``n``.
    Worker-side (it replaces Triton's driver): call it in a process of its own."""
    _worker_setup()
    SHAPES["N"] = n
    _LAUNCH_CACHE.clear()
    counts: dict[str, int] = {}
    for launch in _variant_launches(variant):
        if not launch.autotuned or launch.kwargs.get("TMA") or launch.fn_name in counts:
            continue
        compiled = _compile_launch(launch, 0)
        counts[launch.fn_name] = len(_ASYNC_COPY_16.findall(compiled.asm["ptx"]))
    return counts


def _worker_main(conn, cache_dir: str) -> None:
    """A pool worker: receives (id, kind, payload), answers (id, result or error)."""
    os.setpgrp()  # its own process group, so that a timeout also ends its ptxas
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    try:
        _worker_setup()
    except Exception as exc:  # reported on every task below
        setup_error = exc
    else:
        setup_error = None
    conn.send("ready")  # deadlines start now, not while torch and triton import
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        task_id, kind, payload = msg
        try:
            if setup_error is not None:
                raise setup_error
            result = _enumerate(payload) if kind == "enumerate" else _compile(payload)
            conn.send((task_id, True, result))
        except Exception as exc:  # one bad compile must not end the sweep
            text = " ".join(f"{type(exc).__name__}: {exc}".split())
            conn.send((task_id, False, text[:300]))


# ---------------------------------------------------------------- the pool (parent side)


class _Pool:
    """Worker processes with a per-task deadline; a late worker is killed and replaced."""

    def __init__(self, workers: int, cache_dir: str):
        self._ctx = multiprocessing.get_context("spawn")
        self._cache_dir = cache_dir
        self._start_failures = 0
        self._workers = [self._start() for _ in range(max(1, workers))]

    def _start(self):
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self._cache_dir), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "task": None, "deadline": None, "ready": False}

    def _kill(self, w) -> None:
        proc = w["proc"]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.join(5)
        w["conn"].close()

    def close(self) -> None:
        for w in self._workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                w["conn"].send(None)
        for w in self._workers:
            w["proc"].join(5)
            if w["proc"].is_alive():
                self._kill(w)

    def run(self, jobs: list[tuple[str, object]], timeout: float,
            stop: Optional[Callable[[], Optional[str]]] = None,
            done: Optional[Callable[[int, bool, object], None]] = None) -> list[tuple[bool, object]]:
        """jobs: (kind, payload). Returns (ok, result or error text) per job, in order.

        timeout: wall seconds per job. stop(): a reason once no further job may start; the
        jobs left get (False, "not started: <reason>").
        """
        results: list = [None] * len(jobs)
        pending = list(range(len(jobs)))[::-1]

        def finish(task: int, ok: bool, value) -> None:
            results[task] = (ok, value)
            if done:
                done(task, ok, value)

        while pending or any(w["task"] is not None for w in self._workers):
            reason = stop() if (pending and stop) else None
            if reason:
                while pending:
                    finish(pending.pop(), False, f"not started: {reason}")
            for w in self._workers:
                if w["ready"] and w["task"] is None and pending:
                    i = pending.pop()
                    w["task"], w["deadline"] = i, time.monotonic() + timeout
                    w["conn"].send((i, *jobs[i]))
            busy = [w for w in self._workers if w["task"] is not None]
            starting = [w for w in self._workers if not w["ready"]]
            wait = max(0.0, min(w["deadline"] for w in busy) - time.monotonic()) if busy else None
            ready = multiprocessing.connection.wait([w["conn"] for w in busy + starting],
                                                    timeout=None if wait is None else wait + 0.05)
            for idx, w in enumerate(self._workers):
                if not w["ready"] and w["conn"] in ready:
                    try:
                        w["ready"] = w["conn"].recv() == "ready"
                    except (EOFError, OSError):  # died while starting: start another, a few times
                        self._kill(w)
                        self._start_failures += 1
                        if self._start_failures > 3:
                            raise RuntimeError(f"worker processes die while starting "
                                               f"(exit code {w['proc'].exitcode})") from None
                        self._workers[idx] = self._start()
                    continue
                task = w["task"]
                if task is None:
                    continue
                if w["conn"] in ready:
                    try:
                        _, ok, value = w["conn"].recv()
                    except (EOFError, OSError):
                        ok, value = False, f"worker died (exit code {w['proc'].exitcode})"
                        self._kill(w)
                        self._workers[idx] = self._start()
                    else:
                        w["task"] = None
                elif time.monotonic() > w["deadline"]:
                    ok, value = False, f"timeout (> {timeout:.0f} s)"
                    self._kill(w)
                    self._workers[idx] = self._start()
                else:
                    continue
                finish(task, ok, value)
        return results


# ---------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    rows: list  # of Row, in enumeration order (variant, launch, config)
    unlaunched: list  # labels of *_kernel functions the launch code never started
    seconds: float  # wall time of the sweep
    cpu_seconds: float = 0.0  # CPU time of the distinct compiles (worker + ptxas)


def _variant_order(v: str) -> int:
    return list(VARIANTS).index(v) if v in VARIANTS else len(VARIANTS)


def sweep(
    variants: Iterable[str] = tuple(VARIANTS),
    kernels: Optional[Callable[[str], bool]] = None,
    workers: Optional[int] = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    cpu_budget: Optional[float] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> SweepResult:
    """Compile the kernel configs for sm_90; one Row per (kernel, config, dtype).

    variants: VARIANTS keys (columns). kernels(label) selects kernels (default: all).
    Compiles that are the same in two variants (a kernel whose fp32 launch ignores the
    matmul precision, the fp32 row kernels of CAM) run once. workers: processes (default:
    one per core). timeout: wall seconds per compile (a hang guard). cpu_budget: CPU
    seconds of finished compiles after which no further compile starts (rows left say
    so): a bound on the work that, unlike wall time, does not move with the machine's load.
    progress: called with one line per compile.
    """
    variants = list(variants)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"variants must be among {list(VARIANTS)}, got {sorted(unknown)}")
    variants = sorted(set(variants), key=_variant_order)  # fp32 first: the longest compiles
    say = progress or (lambda text: None)
    workers = max(1, workers or os.cpu_count() or 1)
    start = time.perf_counter()
    cache_dir = tempfile.mkdtemp(prefix="danet-static-sm90-")
    pool = _Pool(workers, cache_dir)
    try:
        ((ok, value),) = pool.run([("enumerate", variants)], max(timeout, ENUMERATE_TIMEOUT_S))
        if not ok:
            raise RuntimeError(f"could not enumerate the kernels' launches: {value}")
        tasks = [t for t in value["tasks"] if kernels is None or kernels(t["kernel"])]
        rows = [Row(t["kernel"], t["config"], t["variant"]) for t in tasks]
        same: dict[str, list[int]] = {}
        for i, t in enumerate(tasks):
            same.setdefault(t["dedupe"], []).append(i)
        jobs = list(same.values())
        say(f"{len(rows)} kernel/config/dtype rows, {len(jobs)} distinct compiles, {workers} "
            f"workers (launches enumerated in {time.perf_counter() - start:.1f} s)")
        finished, cpu = [0], [0.0]

        def stop() -> Optional[str]:
            if cpu_budget is not None and cpu[0] > cpu_budget:
                return f"the sweep's budget of {cpu_budget:.0f} CPU seconds was spent"
            return None

        def done(j: int, ok: bool, value) -> None:
            finished[0] += 1
            if ok:
                cpu[0] += value.get("compile_cpu_s") or 0.0
            for i in jobs[j]:
                if ok:
                    for k, v in value.items():
                        setattr(rows[i], k, v)
                else:
                    known = value.startswith(("timeout", "not started"))
                    rows[i].status = value if known else f"error: {value}"
            r = rows[jobs[j][0]]
            say(f"  [{finished[0]}/{len(jobs)}] {r.kernel} {r.config} {r.dtype}: {cell(r)}"
                f"  ({'-' if r.compile_s is None else r.compile_s} s, "
                f"elapsed {time.perf_counter() - start:.0f} s)")

        pool.run([("compile", tasks[ids[0]]) for ids in jobs], timeout, stop, done)
    finally:
        pool.close()
        shutil.rmtree(cache_dir, ignore_errors=True)
    return SweepResult(rows, value["unlaunched"], time.perf_counter() - start, cpu[0])


# ---------------------------------------------------------------- reports


def cell(r: Row) -> str:
    """``189r 81920``, ``32r SPILL22068/32484 131328``, ``... >SMEM!``, or the status."""
    if not r.ok:
        return r.status
    text = f"{r.registers}r"
    if r.spills:
        text += f" SPILL{r.spill_stores}/{r.spill_loads}"
    text += f" {r.shared_bytes}"
    if r.exceeds_shared:
        text += " >SMEM!"
    return text


def problems(rows: list[Row]) -> dict[str, list[Row]]:
    return {
        "exceeds shared memory": [r for r in rows if r.ok and r.exceeds_shared],
        "spills": [r for r in rows if r.ok and r.spills],
        "did not compile": [r for r in rows if not r.ok],
    }


def kernels_without_clean_config(rows: list[Row]) -> list[tuple[str, str]]:
    """(kernel, dtype) pairs none of whose configs is clean. Pairs with configs a time
    budget left unstarted are not judged (their rows say so)."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.kernel, r.dtype), []).append(r)
    return [key for key, group in groups.items()
            if not any(r.clean for r in group) and not any(r.status.startswith("not started") for r in group)]


def summary_lines(result: SweepResult) -> list[str]:
    rows = result.rows
    p = problems(rows)
    lines = [f"{len(rows)} kernel/config/dtype rows: {sum(r.ok for r in rows)} compiled, "
             f"{len(p['spills'])} spill, {len(p['exceeds shared memory'])} exceed "
             f"{SMEM_LIMIT} bytes of shared memory, {len(p['did not compile'])} not compiled; "
             f"{result.seconds:.0f} s wall, {result.cpu_seconds:.0f} s CPU in compiles"]
    lines += [f"no clean config: {kernel} {dtype}" for kernel, dtype in kernels_without_clean_config(rows)]
    lines += [f"never launched at DANet's shapes: {label}" for label in result.unlaunched]
    return lines


def markdown(result: SweepResult, env: dict, command: str) -> str:
    rows = result.rows
    lines = ["# sm_90 static resources of the Triton kernels (compiled without a GPU)", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += [
        f"- command: `{command}`",
        f"- shapes: B={SHAPES['B']}, Cqk={SHAPES['CQK']}, Cv={SHAPES['CV']}, N={SHAPES['N']}; "
        f"CAM C={SHAPES['C']}; gamma, residual and saved o on",
        "- cells: registers per thread, `SPILL<stores>/<loads>` (bytes, ptxas -v) if any, shared "
        f"memory bytes per block; `>SMEM!` = over sm_90's {SMEM_LIMIT}-byte limit (never launchable)",
        '- `fp32-high`: fp32 under `torch.set_float32_matmul_precision("high")`',
        "- how: the docstring of benchmarks/static_sm90.py; the CSV has stack frames and compile times",
        "",
    ]
    summary = summary_lines(result)
    lines += [f"**{summary[0]}**", ""]
    if summary[1:]:
        lines += [f"- **{line}**" for line in summary[1:]] + [""]
    for kernel in dict.fromkeys(r.kernel for r in rows):
        krows = [r for r in rows if r.kernel == kernel]
        dtypes = sorted(dict.fromkeys(r.dtype for r in krows), key=_variant_order)
        by_key = {(r.config, r.dtype): r for r in krows}
        lines += [f"## {kernel}", "", "| config | " + " | ".join(dtypes) + " |",
                  "|---|" + "---|" * len(dtypes)]
        for config in dict.fromkeys(r.config for r in krows):
            cells = [cell(by_key[(config, d)]) if (config, d) in by_key else "" for d in dtypes]
            lines.append(f"| {config} | " + " | ".join(cells) + " |")
        lines.append("")
    for what, bad in problems(rows).items():
        if bad:
            lines += [f"## {what} ({len(bad)})", ""]
            for r in bad:
                detail = (f"{r.registers} registers, spill stores/loads {r.spill_stores}/{r.spill_loads} B, "
                          f"stack {r.stack_bytes} B, shared {r.shared_bytes} B" if r.ok else r.status)
                lines.append(f"- {r.kernel} | {r.config} | {r.dtype}: {detail}")
            lines.append("")
    return "\n".join(lines)


def write_results(result: SweepResult, out_dir: Path, env: dict, command: str) -> list[Path]:
    """``triton-<version>.md`` and ``.csv`` in out_dir (each Triton version compiles differently)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"triton-{env.get('triton', 'unknown')}"
    md, csv_path = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
    md.write_text(markdown(result, env, command))
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in result.rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.as_dict().items()})
    return [md, csv_path]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.static_sm90", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default=",".join(VARIANTS),
                        help=f"columns to compile, among {','.join(VARIANTS)} (default: all)")
    parser.add_argument("--kernels", default=None,
                        help="comma-separated substrings of kernel labels (default: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: cores)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per compile")
    parser.add_argument("--out", default=None,
                        help=f"output folder (default: {RESULTS_DIR.relative_to(REPO_ROOT)} for a full "
                             "sweep; a partial one writes only where --out says)")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"cannot compile for sm_90 here: {reason}", file=sys.stderr)
        return 2
    env = versions()
    print(f"triton {env['triton']}, torch {env['torch']}, ptxas {env['ptxas']}, git {env['git']}", flush=True)
    variants = [d for d in args.dtypes.split(",") if d]
    wanted = [k for k in (args.kernels or "").split(",") if k]
    load_start = os.getloadavg()[0]
    result = sweep(
        variants=variants,
        kernels=(lambda label: any(k in label for k in wanted)) if wanted else None,
        workers=args.workers, timeout=args.timeout, progress=lambda line: print(line, flush=True),
    )
    env["machine load (1-min load average, start / end)"] = (
        f"{load_start:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {args.workers} workers; "
        "wall times grow with the load, CPU times hardly")
    for line in summary_lines(result):
        print(line)
    full = not wanted and set(variants) == set(VARIANTS)
    out = Path(args.out) if args.out else (RESULTS_DIR if full else None)
    if out is not None:
        given = list(argv if argv is not None else sys.argv[1:])
        command = " ".join(["python -m benchmarks.static_sm90"] + given)
        for path in write_results(result, out, env, command):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
