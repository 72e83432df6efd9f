"""Every bad input gets a ValueError/TypeError naming the argument and the shapes."""
import pytest
import torch

import danet_ops
from danet_ops import backends


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
        (dict(gamma=0.5), TypeError, ["gamma", "float"]),
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
