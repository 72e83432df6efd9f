"""ONNX export through danet_ops.onnx_translation_table(): a small DANet and a full-size
DAHead, run in onnxruntime on the CPU, against PyTorch.

Needs onnx, onnxscript and onnxruntime (``pip install ".[onnx]"``; ``.ci/mmseg.sh`` runs
this file in a venv that has them); skipped, with the reason, where they are missing.
"""
from __future__ import annotations

import pytest
import torch
from helpers import rel_err
from torch import nn

import danet_ops
import models

onnx = pytest.importorskip("onnx", reason='onnx is not installed (pip install ".[onnx]")')
pytest.importorskip("onnxscript", reason='onnxscript is not installed (pip install ".[onnx]")')
ort = pytest.importorskip("onnxruntime", reason='onnxruntime is not installed (pip install ".[onnx]")')



def _export_and_run(model: nn.Module, inputs: torch.Tensor, path) -> list:
    torch.onnx.export(
        model, (inputs,), str(path), dynamo=True,
        custom_translation_table=danet_ops.onnx_translation_table(),
    )
    graph = onnx.load(str(path)).graph
    # Standard ONNX operators only (no danet_ops or other custom-domain nodes left), with
    # the attention as the eager math: MatMul and Softmax.
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}
    assert {"MatMul", "Softmax"} <= {node.op_type for node in graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs.numpy()})


class Segment(nn.Module):
    """What a deployment exports: normalised images -> logits at the input size."""

    def __init__(self, danet: models.DANet) -> None:
        super().__init__()
        self.danet = danet

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.danet.encode_decode(images)


def _nonzero_gammas(head) -> None:
    with torch.no_grad():
        head.pam.gamma.scale.fill_(0.5)
        head.cam.gamma.scale.fill_(0.7)


def test_small_danet_onnx_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    danet = models.build_tiny_danet(num_classes=5, attention_backend="chunked")
    _nonzero_gammas(danet.decode_head)
    model = Segment(danet).eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(images)
    (out,) = _export_and_run(model, images, tmp_path / "danet.onnx")
    assert out.shape == (1, 5, 64, 96)
    assert rel_err(torch.from_numpy(out), ref) <= 1e-4


def test_full_size_dahead_onnx_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    head = models.DAHead(in_channels=2048, channels=512, pam_channels=64, num_classes=19,
                         attention_backend="chunked")
    _nonzero_gammas(head)
    head.eval()
    feature = torch.randn(1, 2048, 16, 24)  # N = 384 positions, C = 512 channels

    class Head(nn.Module):  # the head takes the list of backbone features
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, x):
            return self.head([x])

    model = Head().eval()
    with torch.no_grad():
        ref = model(feature)
    outs = _export_and_run(model, feature, tmp_path / "dahead.onnx")
    assert len(outs) == 3  # pam_cam, pam, cam
    for out, expected in zip(outs, ref):
        assert rel_err(torch.from_numpy(out), expected) <= 1e-4
