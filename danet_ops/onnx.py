"""ONNX export: danet_ops' custom ops written as standard ONNX operators.

``torch.onnx.export(..., dynamo=True)`` does not know ``danet_ops::pam_forward`` and
``danet_ops::cam_forward``; :func:`translation_table` (also ``danet_ops.onnx_translation_table``)
maps them to the eager reference's math in ONNX Script (MatMul, Softmax, Mul, Add, ...)::

    torch.onnx.export(model, (x,), "danet.onnx", dynamo=True,
                      custom_translation_table=danet_ops.onnx_translation_table())

The exported graph computes attention unfused, as mmseg's eager code does: it materialises
the N x N (PAM) and C x C (CAM) matrices. The fused kernels live in PyTorch only.
Only the forward ops are translated (an inference graph has no others). Needs ``onnxscript``
(``pip install "danet_ops[onnx]"``).
"""
from __future__ import annotations

from typing import Callable

import torch
from onnxscript import opset18 as op

# ONNX TensorProto codes for the softmax statistics (float32; float64 for float64 inputs).
_FLOAT, _DOUBLE = 1, 11


def _stat_like(t, value):
    """``value`` cast to the stat dtype danet_ops uses for inputs like ``t``."""
    return op.Cast(value, to=_DOUBLE if t.dtype == _DOUBLE else _FLOAT)


def _epilogue(out, gamma, residual):
    if gamma is not None:
        out = op.Mul(out, op.CastLike(gamma, out))
    if residual is not None:
        out = op.Add(out, residual)
    return out


def pam_forward(q, k, v, gamma, residual, scale: float, save_o: bool, backend: str):
    """``danet_ops::pam_forward`` (q, k ``[B, Cqk, N]``, v ``[B, Cv, N]``) as
    mmseg's PAM computes it: ``A = softmax(scale·qᵀk)``, ``o = v·Aᵀ``, ``gamma·o + residual``.
    Returns (out, lse, o) like the op; o is empty where the op's is."""
    energy = op.MatMul(op.Transpose(q, perm=[0, 2, 1]), k)  # [B, N, N]
    if scale != 1.0:
        energy = op.Mul(energy, op.CastLike(op.Constant(value_float=scale), energy))
    attention = op.Softmax(energy, axis=-1)
    o = op.MatMul(v, op.Transpose(attention, perm=[0, 2, 1]))  # [B, Cv, N]
    lse = _stat_like(q, op.ReduceLogSumExp(energy, op.Constant(value_ints=[-1]), keepdims=0))
    has_epilogue = gamma is not None or residual is not None
    if not has_epilogue:
        return o, lse, o
    saved_o = o if save_o else op.Reshape(op.Slice(o, [0], [0]), [0])
    return _epilogue(o, gamma, residual), lse, saved_o


def cam_forward(x, gamma, backend: str):
    """``danet_ops::cam_forward`` (x ``[B, C, N]``) as mmseg's CAM computes it:
    ``E = x·xᵀ``, ``A = softmax(rowmax(E) − E)``, ``gamma·(A·x) + x`` (or ``A·x`` without gamma).
    Returns (out, attn) like the op."""
    energy = op.MatMul(x, op.Transpose(x, perm=[0, 2, 1]))  # [B, C, C]
    energy_new = op.Sub(op.ReduceMax(energy, op.Constant(value_ints=[-1]), keepdims=1), energy)
    attention = op.Softmax(energy_new, axis=-1)
    out = op.MatMul(attention, x)
    if gamma is not None:
        out = op.Add(op.Mul(out, op.CastLike(gamma, out)), x)
    return out, _stat_like(x, attention)


def translation_table() -> dict[Callable, Callable]:
    """``{danet_ops op overload: ONNX Script function}`` for ``torch.onnx.export``'s
    ``custom_translation_table`` (with ``dynamo=True``)."""
    return {
        torch.ops.danet_ops.pam_forward.default: pam_forward,
        torch.ops.danet_ops.cam_forward.default: cam_forward,
    }
