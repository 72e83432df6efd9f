"""Every bad input gets a ValueError/TypeError naming the argument and the shapes."""
import pytest
import torch

import danet_ops
from danet_ops import backends, functional


def _pam(**overrides):
    args = dict(
        query=torch.randn(2, 8, 5, 6), key=torch.randn(2, 8, 5, 6), value=torch.randn(2, 16, 5, 6),
        gamma=torch.tensor(0.5), residual=torch.randn(2, 16, 5, 6), backend="chunked",
    )
    args.update(overrides)
    q, k, v = args.pop("query"), args.pop("key"), args.pop("value")
    return danet_ops.position_attention(q, k, v, **args)


@pytest.mark.parametrize(
    "overrides,error,words",
    [
        (dict(query=torch.randn(2, 8)), ValueError, ["query", "(2, 8)"]),
        (dict(query=torch.randn(1, 2, 8, 5, 6)), ValueError, ["query", "(1, 2, 8, 5, 6)"]),
        (dict(query=[[1.0]]), TypeError, ["query", "list"]),
        (dict(key=torch.randn(2, 4, 5, 6)), ValueError, ["key", "(2, 4, 5, 6)", "(2, 8, 5, 6)"]),
        (dict(value=torch.randn(3, 16, 5, 6)), ValueError, ["value", "(3, 16, 5, 6)"]),
        (dict(value=torch.randn(2, 16, 6, 5)), ValueError, ["value", "(2, 16, 6, 5)"]),
        (dict(value=torch.randn(2, 16, 30)), ValueError, ["value", "(2, 16, 30)"]),
        (dict(residual=torch.randn(2, 8, 5, 6)), ValueError, ["residual", "(2, 8, 5, 6)"]),
        (dict(query=torch.randn(2, 8, 5, 6, dtype=torch.float16)), TypeError, ["query", "float16", "key"]),
        (dict(value=torch.randn(2, 16, 5, 6).to(torch.float16)), TypeError, ["value", "float16"]),
        (dict(query=torch.randint(0, 3, (2, 8, 5, 6))), TypeError, ["query", "int64"]),
        (dict(gamma=torch.ones(2)), ValueError, ["gamma", "(2,)"]),
        (dict(gamma=True), TypeError, ["gamma", "bool"]),
        (dict(gamma="0.5"), TypeError, ["gamma", "str"]),
        (dict(gamma=torch.tensor(1)), TypeError, ["gamma", "int64"]),
        (dict(query=torch.randn(2, 8, 0, 6), key=torch.randn(2, 8, 0, 6)), ValueError, ["query", "empty"]),
        (dict(scale=float("nan")), TypeError, ["scale"]),
        (dict(scale="1"), TypeError, ["scale"]),
        (dict(backend="fast"), ValueError, ["backend", "fast"]),
        (dict(backend="triton"), ValueError, ["triton", "cpu"]),
        (dict(backend="cuda"), ValueError, ["cuda", "cpu"]),
    ],
)
def test_position_attention_rejects(overrides, error, words, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(error) as info:
        _pam(**overrides)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_float64_on_a_kernel_backend_is_refused():
    x = torch.randn(1, 8, 10, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        danet_ops.channel_attention(x, backend="triton")


@pytest.mark.parametrize(
    "x,kwargs,error,words",
    [
        (torch.randn(8, 10), {}, ValueError, ["x", "(8, 10)"]),
        ("x", {}, TypeError, ["x", "str"]),
        (torch.randn(1, 8, 10).to(torch.int32), {}, TypeError, ["x", "int32"]),
        (torch.randn(1, 8, 10), dict(gamma=torch.ones(1, 2)), ValueError, ["gamma", "(1, 2)"]),
        (torch.randn(1, 8, 10), dict(backend=3), TypeError, ["backend", "int"]),
        (torch.randn(1, 8, 10), dict(backend="nope"), ValueError, ["backend", "nope"]),
    ],
)
def test_channel_attention_rejects(x, kwargs, error, words):
    with pytest.raises(error) as info:
        danet_ops.channel_attention(x, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_mixed_devices_are_refused():
    meta = torch.randn(2, 16, 5, 6, device="meta")
    with pytest.raises(ValueError, match="value is on meta"):
        _pam(value=meta)


def test_unavailable_backend_error_says_why(monkeypatch):
    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device: "no toolchain; pip install it")
    with pytest.raises(backends.BackendUnavailableError, match="no toolchain; pip install it"):
        backends.resolve("cuda", torch.device("cuda"), torch.float16, 1, 8, 8)


def test_auto_picks_by_device_and_size():
    cpu = torch.device("cpu")
    assert backends.resolve("auto", cpu, torch.float32, 1, 64, 64) == "eager"
    assert backends.resolve("auto", cpu, torch.float32, 1, 2048, 2048) == "eager"
    assert backends.resolve("auto", cpu, torch.float32, 1, 3072, 3072) == "chunked"
    assert backends.resolve("auto", torch.device("cuda"), torch.float64, 1, 8, 8) == "chunked"
    assert "eager" in danet_ops.available_backends("cpu") and "chunked" in danet_ops.available_backends("cpu")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backend_on_cpu_tensors_says_the_fix_once(backend, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError) as info:
        danet_ops.channel_attention(torch.randn(1, 8, 10), backend=backend)
    msg = str(info.value)
    assert f"backend {backend!r}" in msg and "cpu" in msg
    assert msg.count(".cuda()") == 1 and msg.count("chunked") == 1, msg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.5, 2])
def test_python_number_gamma_equals_tensor_gamma(gamma, dtype):
    x = torch.randn(2, 8, 5, 6, dtype=dtype)
    as_tensor = torch.tensor(float(gamma))
    cam = danet_ops.channel_attention(x, gamma=gamma, backend="chunked")
    assert cam.dtype == dtype
    assert torch.equal(cam, danet_ops.channel_attention(x, gamma=as_tensor, backend="chunked"))
    q, k, v = torch.randn(2, 4, 5, 6, dtype=dtype), torch.randn(2, 4, 5, 6, dtype=dtype), x
    pam = danet_ops.position_attention(q, k, v, gamma=gamma, residual=x, backend="chunked")
    pam_tensor = danet_ops.position_attention(q, k, v, gamma=as_tensor, residual=x, backend="chunked")
    assert torch.equal(pam, pam_tensor)
    eager = danet_ops.channel_attention(x.double(), gamma=gamma, backend="eager")
    assert torch.allclose(
        eager, danet_ops.channel_attention(x.double(), gamma=as_tensor.double(), backend="eager")
    )


def test_cam_too_large_for_memory_is_refused_before_allocating():
    if functional._free_bytes(torch.device("cpu")) is None:
        pytest.skip("free CPU memory is not known on this platform")
    # C = 32768: one [C, C] float32 matrix is 4 GiB; 1024 of them (an expanded batch, no
    # memory behind x) exceed any machine.
    x = torch.randn(1, 32768, 1).expand(1024, 32768, 1)
    with pytest.raises(danet_ops.AttentionMemoryError) as info:
        danet_ops.channel_attention(x, gamma=0.5)
    msg = str(info.value)
    assert "C = 32768" in msg and "[1024, 32768, 32768] float32" in msg
    assert f"{1024 * 32768 * 32768 * 4:,} bytes" in msg and "free" in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, torch.OutOfMemoryError)


def test_memory_check_uses_the_device_free_memory(monkeypatch):
    monkeypatch.setattr(functional, "_free_bytes", lambda device: 100 * 2**20)
    x = torch.randn(1, 8192, 1)  # a 256 MiB C x C matrix, over the 100 MiB "free"
    with pytest.raises(
        danet_ops.AttentionMemoryError, match="C = 8192.*268,435,456 bytes.*104,857,600 bytes"
    ):
        danet_ops.channel_attention(x, backend="chunked")
    q = torch.randn(1, 4, 128, 64)  # N = 8192: eager PAM's N x N matrix, the same 256 MiB
    with pytest.raises(danet_ops.AttentionMemoryError, match="N = 8192.*chunked"):
        danet_ops.position_attention(q, q, q, backend="eager")


def test_small_matrices_do_not_query_free_memory(monkeypatch):
    def fail(device):
        raise AssertionError("free memory queried for a small matrix")

    monkeypatch.setattr(functional, "_free_bytes", fail)
    danet_ops.channel_attention(torch.randn(2, 512, 64), backend="chunked")
    danet_ops.position_attention(*[torch.randn(1, 8, 32, 32)] * 3, backend="eager")
