"""torch.export of DANet (models.build_danet) on each backend: the exported program runs
danet_ops' custom ops (traced through their fake implementations) and matches eager."""
from __future__ import annotations

import pytest
import torch
from helpers import rel_err

import models
from danet_ops import backends

HAS_CUDA = torch.cuda.is_available()


def _danet(backend: str, device: str = "cpu"):
    model = models.build_danet("danet_r50-d8_4xb2-40k_cityscapes-512x1024", attention_backend=backend)
    with torch.no_grad():
        model.decode_head.pam.gamma.scale.fill_(0.5)  # 0 at init: attention would be off
        model.decode_head.cam.gamma.scale.fill_(0.7)
    return model.to(device).eval()


def _check_export(backend: str, device: str) -> None:
    reason = backends.unavailable_reason(backend, torch.device(device))
    if reason is not None:
        pytest.skip(f"backend {backend!r} unavailable here: {reason}")
    torch.manual_seed(0)
    model = _danet(backend, device)
    images = torch.randn(1, 3, 64, 64, device=device)  # an 8x8 feature map: N = 64, C = 512
    exported = torch.export.export(model, (images,))
    targets = {str(node.target) for node in exported.graph.nodes}
    custom_ops = {t for t in targets if t.startswith("danet_ops.")}
    if backend == "eager":
        assert not custom_ops  # mmseg's math: plain aten ops
    else:
        assert custom_ops == {"danet_ops.pam_forward.default", "danet_ops.cam_forward.default"}
    with torch.no_grad():
        ref = model(images)
    out = exported.module()(images)
    assert set(out) == set(ref) == {"pam_cam", "pam", "cam", "aux"}
    for name in ref:
        assert rel_err(out[name], ref[name]) < 1e-6, name


@pytest.mark.parametrize("backend", ["eager", "chunked", "triton"])
def test_export_danet_matches_eager_cpu(backend):
    # triton on the CPU: through the interpreter (conftest sets TRITON_INTERPRET=1).
    _check_export(backend, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_export_danet_matches_eager_gpu(backend):
    _check_export(backend, "cuda")
