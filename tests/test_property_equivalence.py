"""Property-based equivalence: every backend that runs here against the float64 reference.

Hypothesis draws the shapes (B, Cqk, Cv, H, W: ragged, 1x1 included), dtype, memory layout
of every input (channel slices, positions-first and channels-last storage, H/W-transposed
storage, strided positions, batch-broadcast), the kind of output gradient (random, an
expanded stride-0 one as ``out.sum().backward()`` makes, batch-broadcast), gamma (absent, a
float, a 0-dim or (1,)-shaped tensor), residual (present or not), scale and the kernel
variants (each switch of ``danet_ops.env.SWITCHES``, set for the example). Each example
runs forward and backward on one backend and compares the output and every gradient with
the eager reference run in float64 on the same (rounded) inputs.

Backends: ``chunked`` and ``triton`` (through Triton's interpreter when there is no GPU;
bf16 only on a GPU, the interpreter's bf16 dot is wrong) and ``cuda`` on a GPU. Without a
GPU the CUDA kernels run through the CPU emulation (csrc/emulation/): its entry points take
dense ``[B, C, N]`` buffers, as the ``cuda`` backend's Python side makes every input
contiguous first, so that test draws shapes, dtypes, epilogues and scale but no layouts.

Errors are relative errors, with the reference's norm floored at a tenth of the size of
the terms it sums (``helpers.cond_err``): where terms cancel (N = 1 or a one-hot softmax
make dq and dk zero in theory) rounding error scales with the terms, not with the near-zero
result. Tolerances: fp32 1e-5 and fp16 1e-2 as in ``helpers.TOLERANCES``; bf16 3e-2 here
against 1e-2 there, because this measure and these draws (1x1 maps, one-hot rows, random
layouts) differ from the runners'; tightening it waits on a run of the thorough profile.

Bounded for CI (about a minute on 2 cores): N <= 81 (two 64-wide tiles at most), few
examples. Set HYPOTHESIS_PROFILE=thorough for a longer local search.
"""
from __future__ import annotations

import os
from unittest import mock

import pytest
import torch
from helpers import cam_yardsticks, cond_err, pam_yardsticks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import danet_ops
from danet_ops import env
from danet_ops.backends import unavailable_reason

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
BACKENDS = [b for b in ("chunked", "triton", "cuda") if unavailable_reason(b, torch.device(DEVICE)) is None]
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}
DTYPES = list(TOL)

# CI runs the same examples every time (derandomize): a red CI is then reproducible and never
# a lucky draw. Locally, HYPOTHESIS_PROFILE=thorough searches fresh examples, many more.
# single_thread (a function-scoped fixture) holds for every example alike; the slow and
# large-data checks would flag the interpreter's cost, not the strategies.
SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True, database=None,
    suppress_health_check=SUPPRESSED,
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None,
    suppress_health_check=SUPPRESSED,
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")


def _examples(n: int) -> settings:
    """``n`` examples in the CI profile, the profile's own number otherwise."""
    base = settings.get_profile(PROFILE)
    return settings(base, max_examples=n if PROFILE == "ci" else base.max_examples)


# --- layouts ---------------------------------------------------------------------------------

LAYOUTS_3D = ("contiguous", "channel_slice", "positions_first", "position_stride", "batch_broadcast")
LAYOUTS_4D = LAYOUTS_3D + ("hw_transposed",)  # positions_first is channels_last in 4-D


def _poisoned(shape, like: torch.Tensor) -> torch.Tensor:
    # Buffers around a view are NaN: a kernel that reads outside the view shows it.
    return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """t's values ([B, C, N] or [B, C, H, W]) stored in another layout, as a new leaf."""
    b, c = t.shape[:2]
    if layout == "contiguous":
        out = t.contiguous()
    elif layout == "channel_slice":  # channels 2..2+C of a wider tensor
        wide = _poisoned((b, c + 3, *t.shape[2:]), t)
        wide[:, 2:2 + c] = t
        out = wide[:, 2:2 + c]
    elif layout == "positions_first":  # [B, N, C] / channels_last storage
        out = t.movedim(1, -1).contiguous().movedim(-1, 1)
    elif layout == "position_stride":  # every other element of a twice-as-long last dim
        wide = _poisoned((*t.shape[:-1], 2 * t.shape[-1]), t)
        wide[..., ::2] = t
        out = wide[..., ::2]
    elif layout == "hw_transposed":
        out = t.transpose(2, 3).contiguous().transpose(2, 3)
    elif layout == "batch_broadcast":  # one item expanded over the batch (stride 0)
        out = t[:1].expand_as(t)
    else:
        raise AssertionError(layout)
    return out.detach().requires_grad_(t.requires_grad)  # detach keeps the strides


def make_dout(shape, dtype, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "random":
        return torch.randn(shape, generator=gen).to(DEVICE, dtype)
    if kind == "ones_expanded":  # what out.sum().backward() hands over: every stride 0
        return torch.ones((), dtype=dtype, device=DEVICE).expand(shape)
    if kind == "batch_broadcast":
        return torch.randn((1, *shape[1:]), generator=gen).to(DEVICE, dtype).expand(shape)
    raise AssertionError(kind)


# --- strategies ------------------------------------------------------------------------------


def _backend_dtypes():
    """Every (backend, dtype) pair that runs here, each its own test with its own examples."""
    pairs = []
    for backend in BACKENDS:
        for dtype in DTYPES:
            if backend == "triton" and dtype == torch.bfloat16 and not ON_GPU:
                continue  # the interpreter's bf16 tl.dot is wrong (not the kernels')
            pairs.append(pytest.param(backend, dtype, id=f"{backend}-{str(dtype)[6:]}"))
    return pairs


BACKEND_DTYPES = _backend_dtypes()
SIDE = st.integers(1, 9)  # H, W: N = H·W from 1 to 81 (two 64-wide tiles), ragged


@st.composite
def gammas(draw):
    kind = draw(st.sampled_from(["none", "float", "0-dim", "(1,)"]))
    value = draw(st.sampled_from([0.75, -1.3, 0.2]))
    if kind == "none":
        return None
    if kind == "float":
        return value
    shape = () if kind == "0-dim" else (1,)
    return torch.full(shape, value, device=DEVICE).requires_grad_()


@st.composite
def pam_cases(draw):
    four_d = draw(st.booleans())
    h, w = draw(SIDE), draw(SIDE)
    case = dict(
        batch=draw(st.integers(1, 3)),
        cqk=draw(st.integers(1, 16)), cv=draw(st.integers(1, 80)),
        spatial=(h, w) if four_d else (h * w,),
        layouts=[draw(st.sampled_from(LAYOUTS_4D if four_d else LAYOUTS_3D)) for _ in range(4)],
        gamma=draw(gammas()), with_residual=draw(st.booleans()),
        scale=draw(st.sampled_from([1.0, 1.0, 0.125, 0.7, 1.9])),
        # Typical |logit| before scale: keeps fp32 softmax rounding (~ε·|logit|) under 1e-5;
        # test_numeric_edges.py covers logits of 1e3 and 1e4.
        logit=draw(st.sampled_from([0.5, 3.0, 10.0])),
        dout=draw(st.sampled_from(["random", "random", "ones_expanded", "batch_broadcast"])),
        # The kernel variants (env.SWITCHES, read at each launch), those not at their default.
        switches={name: value for name, value in draw(st.fixed_dictionaries(
            {name: st.sampled_from(s.options) for name, s in env.SWITCHES.items()})).items()
            if value != env.SWITCHES[name].options[0]},
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    return case


# Examples per (backend, dtype) pair: chunked costs milliseconds an example, Triton's
# interpreter about 0.3 s.
EXAMPLES = {"chunked": 100, "triton": 100 if ON_GPU else 16, "cuda": 100}


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_pam_backends_match_float64_reference(backend, dtype, single_thread):
    @given(case=pam_cases())
    @_examples(EXAMPLES[backend])
    def check(case):
        with mock.patch.dict(os.environ, case["switches"]):
            _check_pam(backend, dtype, case)

    check()


def _check_pam(backend, dtype, case):
    gen = torch.Generator().manual_seed(case["seed"])
    b, cqk, cv, spatial = case["batch"], case["cqk"], case["cv"], case["spatial"]
    # |qᵀk| ~ m²·sqrt(Cqk): m chosen so the logits' spread is about case["logit"].
    m = (case["logit"] / cqk ** 0.5) ** 0.5

    def rand(c, mag=1.0):
        t = (torch.randn((b, c, *spatial), generator=gen) * mag).to(DEVICE, dtype)
        return t.requires_grad_()

    q, k, v = rand(cqk, m), rand(cqk, m), rand(cv)
    residual = rand(cv) if case["with_residual"] else None
    tensors = [in_layout(t, lay) if t is not None else None
               for t, lay in zip((q, k, v, residual), case["layouts"])]
    q, k, v, residual = tensors
    gamma = case["gamma"]
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual,
                                       scale=case["scale"], backend=backend)
    assert out.shape == v.shape and out.dtype == dtype
    dout = make_dout(out.shape, dtype, case["dout"], gen)
    leaves = [t for t in (q, k, v, gamma, residual) if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = dict(zip(map(id, leaves), torch.autograd.grad(out, leaves, dout)))

    up = [None if t is None else t.detach().double().requires_grad_()
          for t in (q, k, v, gamma if isinstance(gamma, torch.Tensor) else None, residual)]
    ref_gamma = up[3] if up[3] is not None else gamma
    ref = danet_ops.position_attention_reference(
        *(t.flatten(2) for t in up[:3]), ref_gamma, None if residual is None else up[4].flatten(2),
        case["scale"])
    ref_leaves = [u for t, u in zip((q, k, v, gamma, residual), up) if any(t is x for x in leaves)]
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout.double().flatten(2))

    sticks = pam_yardsticks(q, k, v, gamma, residual, dout, case["scale"])
    tol = TOL[dtype]
    errors = {"out": cond_err(out, ref, sticks[0])}
    by_name = {"q": (q, sticks[1]), "k": (k, sticks[2]), "v": (v, sticks[3]),
               "gamma": (gamma, sticks[4]), "residual": (residual, dout.double().abs())}
    ref_by_id = dict(zip(map(id, leaves), ref_grads))
    for name, (t, stick) in by_name.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            g = grads[id(t)]
            assert g.shape == t.shape and g.dtype == t.dtype, name
            errors["d" + name] = cond_err(g, ref_by_id[id(t)], stick)
    bad = {name: e for name, e in errors.items() if not e <= tol}
    assert not bad, f"errors over {tol}: {bad} in {backend}, {dtype}, {_describe(case)}"


@st.composite
def cam_cases(draw):
    four_d = draw(st.booleans())
    h, w = draw(SIDE), draw(SIDE)
    return dict(
        batch=draw(st.integers(1, 3)), channels=draw(st.integers(1, 48)),
        spatial=(h, w) if four_d else (h * w,),
        layout=draw(st.sampled_from(LAYOUTS_4D if four_d else LAYOUTS_3D)),
        gamma=draw(gammas()),
        # Spread of the Gram entries Σ_n x²: up to a near one-hot softmax.
        gram=draw(st.sampled_from([0.5, 5.0, 30.0])),
        dout=draw(st.sampled_from(["random", "random", "ones_expanded", "batch_broadcast"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_cam_backends_match_float64_reference(backend, dtype, single_thread):
    @given(case=cam_cases())
    @_examples(EXAMPLES[backend] * 2 // 3)
    def check(case):
        _check_cam(backend, dtype, case)

    check()


def _check_cam(backend, dtype, case):
    gen = torch.Generator().manual_seed(case["seed"])
    b, c, spatial = case["batch"], case["channels"], case["spatial"]
    n = 1
    for s in spatial:
        n *= s
    m = (case["gram"] / n) ** 0.5  # E_ii = Σ_n x² ~ m²·N
    x = (torch.randn((b, c, *spatial), generator=gen) * m).to(DEVICE, dtype).requires_grad_()
    x = in_layout(x, case["layout"])
    gamma = case["gamma"]
    out = danet_ops.channel_attention(x, gamma=gamma, backend=backend)
    assert out.shape == x.shape and out.dtype == dtype
    dout = make_dout(out.shape, dtype, case["dout"], gen)
    leaves = [x] + ([gamma] if isinstance(gamma, torch.Tensor) else [])
    grads = torch.autograd.grad(out, leaves, dout)

    x64 = x.detach().double().requires_grad_()
    g64 = gamma.detach().double().requires_grad_() if isinstance(gamma, torch.Tensor) else gamma
    ref = danet_ops.channel_attention_reference(x64.flatten(2), g64)
    ref_leaves = [x64] + ([g64] if isinstance(gamma, torch.Tensor) else [])
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout.double().flatten(2))

    out_stick, dx_stick, dgamma_stick = cam_yardsticks(x, gamma, dout)
    tol = TOL[dtype]
    errors = {"out": cond_err(out, ref, out_stick), "dx": cond_err(grads[0], ref_grads[0], dx_stick)}
    assert grads[0].shape == x.shape and grads[0].dtype == dtype
    if len(grads) > 1:
        assert grads[1].shape == gamma.shape
        errors["dgamma"] = cond_err(grads[1], ref_grads[1], dgamma_stick)
    bad = {name: e for name, e in errors.items() if not e <= tol}
    assert not bad, f"errors over {tol}: {bad} in {backend}, {dtype}, {_describe(case)}"


def _describe(case: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in case.items() if k != "gamma") + f", gamma={case['gamma']!r}"


# --- the CUDA kernels through the CPU emulation ------------------------------------------------
# Dense buffers only (see the module docstring): shapes, dtypes, epilogue, scale, Gram splits.

EMU_DTYPES = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])


@pytest.mark.skipif(ON_GPU, reason="the real cuda backend is in the tests above on a GPU")
@EMU_DTYPES
@given(b=st.integers(1, 2), cqk=st.integers(1, 20), cv=st.integers(1, 80), n=st.integers(1, 81),
       gamma=st.sampled_from([None, 0.75]), with_residual=st.booleans(),
       scale=st.sampled_from([1.0, 0.7]), logit=st.sampled_from([0.5, 3.0, 10.0]),
       variants=st.booleans(), seed=st.integers(0, 2**31 - 1))
@_examples(5)
def test_emulated_cuda_pam_matches_float64_reference(emulated_kernels, b, cqk, cv, n, dtype, gamma,
                                                     with_residual, scale, logit, variants, seed):
    """``variants``: the whole-v-width forward and the fused backward (fp16/bf16; fp32 takes
    the default kernels, which the emulation's path check asserts)."""
    import cuda_emulation

    gen = torch.Generator().manual_seed(seed)
    m = (logit / cqk ** 0.5) ** 0.5
    q, k = ((torch.randn(b, cqk, n, generator=gen) * m).to(dtype) for _ in range(2))
    v, res, dout = (torch.randn(b, cv, n, generator=gen).to(dtype) for _ in range(3))
    res = res if with_residual else None
    g = None if gamma is None else torch.tensor(gamma)
    out, o, lse = cuda_emulation.pam_forward(emulated_kernels, q, k, v, g, res, scale, whole_cv=variants)
    dq, dk, dv, dgamma = cuda_emulation.pam_backward(emulated_kernels, dout, q, k, v, g, o, lse, scale,
                                                     fused=variants)

    up = [None if t is None else t.double().requires_grad_() for t in (q, k, v, g)]
    ref = danet_ops.position_attention_reference(*up, None if res is None else res.double(), scale)
    leaves = [t for t in up if t is not None]
    ref_grads = torch.autograd.grad(ref, leaves, dout.double())
    sticks = pam_yardsticks(q, k, v, g, res, dout, scale)
    errors = {"out": cond_err(out, ref, sticks[0])}
    grads = (dq, dk, dv, dgamma)
    for name, got, ref_g, stick in zip(("dq", "dk", "dv", "dgamma"), grads, ref_grads, sticks[1:]):
        errors[name] = cond_err(got, ref_g, stick)
    tol = TOL[dtype]
    bad = {name: e for name, e in errors.items() if not e <= tol}
    assert not bad, f"errors over {tol}: {bad}"


@pytest.mark.skipif(ON_GPU, reason="the real cuda backend is in the tests above on a GPU")
@EMU_DTYPES
@given(
    b=st.integers(1, 2),
    c=st.integers(1, 80),
    n=st.integers(1, 81),
    gamma=st.sampled_from([None, 0.75]),
    splits=st.integers(1, 3),
    gram=st.sampled_from([0.5, 5.0, 30.0]),
    seed=st.integers(0, 2**31 - 1),
)
@_examples(5)
def test_emulated_cuda_cam_matches_float64_reference(
    emulated_kernels, b, c, n, dtype, gamma, splits, gram, seed
):
    import cuda_emulation

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, c, n, generator=gen) * (gram / n) ** 0.5).to(dtype)
    dout = torch.randn(b, c, n, generator=gen).to(dtype)
    g = None if gamma is None else torch.tensor(gamma)
    out, attn = cuda_emulation.cam_forward(emulated_kernels, x, g, splits)
    dx, dgamma = cuda_emulation.cam_backward(emulated_kernels, dout, x, attn, g, splits)

    leaves = [x.double().requires_grad_()] + ([] if g is None else [g.double().requires_grad_()])
    ref = (
        danet_ops.channel_attention_reference(*leaves)
        if g is not None
        else danet_ops.channel_attention_reference(leaves[0])
    )
    ref_grads = torch.autograd.grad(ref, leaves, dout.double())
    out_stick, dx_stick, dgamma_stick = cam_yardsticks(x, g, dout)
    errors = {"out": cond_err(out, ref, out_stick), "dx": cond_err(dx, ref_grads[0], dx_stick)}
    if g is not None:
        errors["dgamma"] = cond_err(dgamma, ref_grads[1], dgamma_stick)
    tol = TOL[dtype]
    bad = {name: e for name, e in errors.items() if not e <= tol}
    assert not bad, f"errors over {tol}: {bad}"
