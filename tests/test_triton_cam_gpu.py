"""The Triton CAM kernels on a GPU: DANet's sizes (C = 512, N up to a whole Cityscapes image),
bf16 (the interpreter's bf16 dot is wrong), autotuned configurations, TF32, torch.compile.

Large shapes are checked against the chunked backend (fp32 statistics, the same contract);
smaller ones against the float64 reference.
"""
import pytest
import torch
from helpers import check_cam, rel_err, run_cam

import danet_ops

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


@pytest.fixture(autouse=True)
def _true_fp32_matmul():
    """True fp32 for the torch side (the chunked backend) unless a test says otherwise."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


def _inputs(shape, dtype, scale=0.05):
    x = (torch.randn(*shape, device="cuda") * scale).to(dtype).requires_grad_()
    gamma = torch.tensor(0.7, device="cuda", requires_grad=True)
    return x, gamma


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "shape", [(2, 64, 97, 97), (1, 512, 1024), (2, 200, 13, 17), (3, 1000, 300)], ids=str
)
def test_matches_float64_reference(shape, dtype):
    """Ragged N, C below, at and above one tile, non-power-of-two C up to 1000."""
    check_cam("triton", shape, dtype=dtype, device="cuda", magnitude=0.05)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(8, 512, 64, 64), (2, 512, 97, 97), (1, 512, 128, 256)], ids=str)
def test_danet_sizes_match_chunked(shape, dtype):
    """C = 512 at ADE20K (B = 8), Cityscapes-crop and whole-image (N = 32768) sizes."""
    check_cam("triton", shape, dtype=dtype, device="cuda", magnitude=0.02, reference="chunked")


def test_fp16_gram_beyond_fp16_range():
    """Unit activations over a whole Cityscapes image: Σx² ≈ 32768 · 3 > 65504."""
    run = check_cam("triton", (1, 64, 128, 256), dtype=torch.float16, device="cuda", magnitude=1.7)
    with torch.no_grad():
        eager = danet_ops.channel_attention(run.inputs["x"], gamma=run.inputs["gamma"], backend="eager")
    assert not torch.isfinite(eager).all()


def test_tf32_when_allowed():
    """matmul precision "high": A·X and dx may use TF32; the Gram stays true fp32."""
    torch.set_float32_matmul_precision("high")  # the float64 reference is unaffected
    check_cam("triton", (2, 512, 64, 64), device="cuda", magnitude=0.05, regime="cam-tf32")


def test_expanded_grad_output():
    x, gamma = _inputs((2, 512, 97, 97), torch.float16)
    danet_ops.channel_attention(x, gamma=gamma, backend="triton").sum().backward()
    _, grads = run_cam("triton", x, gamma, torch.ones(x.shape, device="cuda", dtype=x.dtype))
    assert torch.equal(x.grad, grads["dx"]) and torch.equal(gamma.grad, grads["dgamma"])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_deterministic(dtype):
    """Bitwise equal run to run, with the split-K Gram in use (B = 1, long N)."""
    from danet_ops.triton import cam

    assert cam._num_splits(512, 32768, 1, True, torch.device("cuda"))[0] > 1
    x, gamma = _inputs((1, 512, 128, 256), dtype)
    dout = torch.randn(x.shape, device="cuda").to(dtype)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        first_out, first_grads = run_cam("triton", x, gamma, dout)
        for _ in range(3):
            out, grads = run_cam("triton", x, gamma, dout)
            assert torch.equal(out, first_out)
            assert all(torch.equal(grads[name], first_grads[name]) for name in grads)
    finally:
        torch.use_deterministic_algorithms(previous)


def test_torch_compile_matches_eager():
    """torch.compile(fullgraph=True) of CAM(backend="triton"): same output and gradients."""
    module = danet_ops.CAM(backend="triton").cuda()
    with torch.no_grad():
        module.gamma.scale.fill_(0.6)
    compiled = torch.compile(module, fullgraph=True)
    x = (torch.randn(2, 512, 33, 65, device="cuda") * 0.05).half().requires_grad_()
    dout = torch.randn(x.shape, device="cuda").half()

    out = module(x)
    dx, dgamma = torch.autograd.grad(out, [x, module.gamma.scale], dout)
    out_c = compiled(x)
    dx_c, dgamma_c = torch.autograd.grad(out_c, [x, module.gamma.scale], dout)
    # The same kernels run either way; a tolerance only so that a graph-level reordering
    # by the compiler cannot flake the test.
    assert rel_err(out_c, out) <= 1e-6
    assert rel_err(dx_c, dx) <= 1e-6 and rel_err(dgamma_c, dgamma) <= 1e-6


def test_cuda_graph_capture():
    """No host synchronisation: forward and backward replay from a CUDA graph."""
    x, gamma = _inputs((2, 512, 64, 64), torch.bfloat16)
    static_dout = torch.randn(x.shape, device="cuda").bfloat16()
    run_cam("triton", x, gamma, static_dout)  # autotune outside the capture

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            run_cam("triton", x, gamma, static_dout)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_grads = run_cam("triton", x, gamma, static_dout)
    graph.replay()
    torch.cuda.synchronize()
    out, grads = run_cam("triton", x, gamma, static_dout)
    assert torch.equal(static_out, out) and all(
        torch.equal(static_grads[name], grads[name]) for name in grads
    )
