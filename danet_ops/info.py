"""``python -m danet_ops``: what danet_ops finds on this machine, and with ``--check`` a
quick self-check of every backend that runs here against the float64 reference.

The report: versions, the device, each backend's availability (or why not), which backend
``backend="auto"`` takes at DANet's training shape, and the kernel switches
(``danet_ops.env.SWITCHES``) with their values. ``--check`` runs PAM and CAM forward and
backward on small ragged shapes (13×17 positions) in each dtype a backend takes on the
device and compares the output and every gradient with the float64 reference; the exit
status is 1 when one is off, so it can gate a job. What to paste into a bug report.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Optional

import torch

import danet_ops
from danet_ops import env
from danet_ops.backends import BACKENDS, resolve, unavailable_reason
from danet_ops.reference import channel_attention_reference, position_attention_reference, relative_error

# Set in the environment, these change what runs; the report shows those that are set.
OTHER_VARIABLES = ("DANET_OPS_TRITON_CONFIG", "DANET_OPS_CACHE", "DANET_OPS_BUILD_CUDA",
                   "TORCH_CUDA_ARCH_LIST", "TRITON_INTERPRET", "TRITON_CACHE_DIR")
# Bounds on ‖got − ref‖/‖ref‖ against the float64 reference on the same rounded inputs, as
# the test suite's (tests/helpers.py): fp32 products are fp32-accurate under the default
# matmul precision "highest"; under "high"/"medium" TF32 is allowed outside the energies.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
TF32_TOLERANCE = 1e-2
# The self-check's shapes: ragged N (13×17 = 221 positions, several tiles with a partial
# last one), Cqk and Cv not multiples of the kernels' tiles; [B, C, N] as the reference takes.
BATCH, CQK, CV, CAM_C, N = 2, 16, 40, 24, 13 * 17


def _versions() -> str:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return (f"danet_ops {danet_ops.__version__} | torch {torch.__version__} (CUDA {torch.version.cuda}) | "
            f"triton {triton_version} | Python {platform.python_version()}")


def _device_text(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"{device}: {props.name} (sm_{props.major}{props.minor}, "
                f"{props.total_memory / 2**30:.1f} GiB)")
    return f"{device}: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def report(device: torch.device) -> list[str]:
    """The report's lines for ``device``."""
    lines = [_versions(), f"device  {_device_text(device)}", "", "backends"]
    for name in BACKENDS[1:]:
        reason = unavailable_reason(name, device)
        lines.append(f"  {name:<8} {'yes' if reason is None else 'no: ' + reason}")
    try:
        from danet_ops.cuda import build
        lines.append(f"  cuda extension: {build.state()}")
    except Exception as exc:  # the report goes on whatever the build code says
        lines.append(f"  cuda extension: unknown ({type(exc).__name__}: {exc})")
    n = 64 * 128  # the Cityscapes training crop's stride-8 feature map
    lines.append(f"  auto     -> {resolve('auto', device, torch.float32, 2, n, n)} "
                 f"(PAM, fp32, B=2, N={n})")
    lines += ["", "switches (environment variables, read at each launch; the first option is the default)"]
    for name, switch in env.SWITCHES.items():
        try:
            value = env.choice(name)
        except ValueError as exc:
            value = f"INVALID: {exc}"
        lines.append(f"  {name} = {value}  [{'|'.join(switch.options)}]: {switch.what}")
    set_here = [f"  {name}={os.environ[name]}" for name in OTHER_VARIABLES if name in os.environ]
    lines += ["", "other variables set"] + (set_here or ["  (none)"])
    lines.append(f"  matmul precision for fp32: {torch.get_float32_matmul_precision()!r}")
    return lines


def _errors(run, ref_run, inputs: dict, dout: torch.Tensor, plain: torch.Tensor) -> dict:
    """The output's and each input gradient's error: ``run`` on the inputs (gamma last),
    ``ref_run`` on float64 copies; ``plain`` is the float64 attention without its epilogue,
    whose product with dout are dgamma's terms."""
    leaves = [t.detach().requires_grad_() for t in inputs.values()]
    out = run(*leaves)
    grads = torch.autograd.grad(out, leaves, dout)
    ref_leaves = [t.detach().double().requires_grad_() for t in inputs.values()]
    ref = ref_run(*ref_leaves)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout.double())
    errors = {"out": relative_error(out, ref)}
    for name, got, want in zip(inputs, grads, ref_grads):
        # dgamma = Σ dout∘plain may cancel far below its terms' rounding error: held to ‖terms‖.
        terms = dout.double() * plain if name == "gamma" else None
        errors["d" + name] = relative_error(got, want, terms, floor=1.0)
    return errors


def _pam_case(backend: str, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    def rand(channels, scale=1.0):
        return (torch.randn(BATCH, channels, N, generator=gen) * scale).to(device, dtype)

    q, k = rand(CQK, scale=0.6), rand(CQK, scale=0.6)  # logits of a few units
    v, x, dout = rand(CV), rand(CV), rand(CV)
    gamma = torch.tensor(0.7, device=device)
    plain = position_attention_reference(q.double(), k.double(), v.double())
    return _errors(
        lambda q, k, v, x, g: danet_ops.position_attention(q, k, v, gamma=g, residual=x, backend=backend),
        lambda q, k, v, x, g: position_attention_reference(q, k, v, g, x),
        dict(q=q, k=k, v=v, residual=x, gamma=gamma), dout, plain)


def _cam_case(backend: str, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    x = (torch.randn(BATCH, CAM_C, N, generator=gen) * 0.3).to(device, dtype)
    dout = torch.randn(BATCH, CAM_C, N, generator=gen).to(device, dtype)
    gamma = torch.tensor(0.7, device=device)
    plain = channel_attention_reference(x.double())
    return _errors(
        lambda x, g: danet_ops.channel_attention(x, gamma=g, backend=backend),
        lambda x, g: channel_attention_reference(x, g),
        dict(x=x, gamma=gamma), dout, plain)


def check_dtypes(device: torch.device) -> tuple:
    """The dtypes checked: fp32 everywhere; on a GPU the half types too (the kernels' own
    paths); on the CPU fp32 only (Triton's interpreter has no true bf16 dot)."""
    return (torch.float32, torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.float32,)


def check(device: torch.device, backends: Optional[list] = None, out=sys.stdout) -> bool:
    """Runs the self-check, one line per (backend, dtype, op) as it ends; True if all pass.
    By default every backend that runs here but ``eager`` (mmseg's math in the input dtype:
    the reference itself, whose half-precision softmax is not what is being checked)."""
    names = backends or [b for b in ("triton", "cuda", "chunked") if unavailable_reason(b, device) is None]
    tf32 = torch.get_float32_matmul_precision() != "highest"
    ok = True
    print(f"self-check on {device}: PAM B={BATCH} Cqk={CQK} Cv={CV} and CAM B={BATCH} C={CAM_C}, "
          f"N={N} positions, forward and backward against float64 (the first cuda call compiles "
          f"the extension: minutes)", file=out, flush=True)
    for backend in names:
        for dtype in check_dtypes(device):
            tf32_here = dtype == torch.float32 and tf32 and device.type == "cuda"
            tol = TF32_TOLERANCE if tf32_here else TOLERANCE[dtype]
            for op, case in (("pam", _pam_case), ("cam", _cam_case)):
                start = time.perf_counter()
                try:
                    errors = case(backend, device, dtype, torch.Generator().manual_seed(0))
                    worst = max(errors, key=errors.get)
                    passed = errors[worst] <= tol
                    detail = f"worst {worst} {errors[worst]:.1e} (bound {tol:.0e})"
                except Exception as exc:  # a failing backend is a finding, not a crash
                    passed, detail = False, f"{type(exc).__name__}: {exc}"
                ok &= passed
                print(f"  {'OK  ' if passed else 'FAIL'} {backend:<8} {str(dtype)[6:]:<9} {op}  {detail}  "
                      f"({time.perf_counter() - start:.1f} s)", file=out, flush=True)
    print("all passed" if ok else "FAILED: see the lines marked FAIL", file=out, flush=True)
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m danet_ops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="the device to report on and check (default: cuda if there is one)")
    p.add_argument("--check", action="store_true", help="run the self-check against float64")
    p.add_argument("--backends", help="with --check: a comma-separated list (default: triton, cuda "
                   "and chunked, those that run here; eager on request)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch sees no CUDA device here")
    print("\n".join(report(device)), flush=True)
    if not args.check:
        return 0
    backends = None
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = [b for b in backends if b not in BACKENDS[1:]]
        if unknown:
            p.error(f"--backends: unknown {unknown}; choose from {', '.join(BACKENDS[1:])}")
        reasons = {b: unavailable_reason(b, device) for b in backends}
        missing = {b: why for b, why in reasons.items() if why is not None}
        if missing:
            p.error(f"--backends: not available on {device}: {missing}")
    print()
    return 0 if check(device, backends) else 1
