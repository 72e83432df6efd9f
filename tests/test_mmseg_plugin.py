"""danet_ops.mmseg: ``FusedDAHead`` inside mmsegmentation's own DANet, against the stock DAHead.

Needs mmsegmentation==1.2.2, mmengine==0.10.7 and mmcv-lite==2.1.0 (``.ci/mmseg.sh`` builds
that venv and runs this file); skipped, with the reason, where mmseg is not importable.

Both models are built from mmseg's shipped config
``danet/danet_r50-d8_4xb2-40k_cityscapes-512x1024.py``: stock, and with the plugin's two
lines (``custom_imports`` + ``decode_head=dict(type="FusedDAHead")``), holding the same
random weights. Inputs are small (64x80 images, an 8x10 feature map; 32x48 for the float64
training step) so this runs on a CPU in about a minute.

``mmcv.ops`` is stubbed here: mmcv-lite has no compiled ops, and mmseg imports ``mmcv.ops``
at module level in files DANet never uses (point_head, psa_head, cc_head, focal_loss, ...).
The stub makes those imports succeed and raises if anything from it is called. It is
installed only when the real ``mmcv.ops`` cannot be imported.
"""
import copy
import os
import subprocess
import sys
import types

import pytest
import torch

mmseg = pytest.importorskip(
    "mmseg", reason="mmsegmentation is not installed (bash .ci/mmseg.sh builds a venv with it)"
)


def _stub_mmcv_ops() -> None:
    try:
        import mmcv.ops  # noqa: F401  (full mmcv: use the real one)
        return
    except ImportError:
        pass
    stub = types.ModuleType("mmcv.ops")

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} is a test stub (mmcv-lite has no compiled ops)")
        return unavailable

    stub.__getattr__ = __getattr__
    sys.modules["mmcv.ops"] = stub


_stub_mmcv_ops()

from mmengine.config import Config, ConfigDict  # noqa: E402
from mmengine.runner.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.modules.batchnorm import _BatchNorm  # noqa: E402

import danet_ops  # noqa: E402

register_all_modules()

STOCK_CONFIG = os.path.join(
    os.path.dirname(mmseg.__file__), ".mim", "configs", "danet",
    "danet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
)
PLUGIN_LINES = """
custom_imports = dict(imports=["danet_ops.mmseg"], allow_failed_imports=False)
model = dict(decode_head=dict(type="FusedDAHead"))
"""
IMAGE = (64, 80)
SLIDE = dict(mode="slide", crop_size=(48, 48), stride=(32, 32))  # 2 x 2 overlapping windows
# "auto" is the config as written; on a CPU at these sizes it picks the eager math.
BACKENDS = ["auto", "chunked"]
GRAD_IMAGE = (32, 48)  # a 4x6 feature map: float64 training steps of ResNet-50 are slow


def build(config_path, **decode_head):
    cfg = Config.fromfile(config_path)
    cfg.model.pretrained = None  # no ImageNet download: random weights
    cfg.model.decode_head.update(decode_head)
    return MODELS.build(cfg.model)


@pytest.fixture(scope="module")
def plugin_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "danet_fused.py"
    path.write_text(f"_base_ = {STOCK_CONFIG!r}\n{PLUGIN_LINES}")
    return str(path)


@pytest.fixture(scope="module")
def stock():
    """mmseg's DANet with random weights, BN statistics from one random batch (so eval-mode
    features are O(1), as in a trained model) and non-zero gammas (0 at init, which would
    switch the attention off)."""
    torch.manual_seed(0)
    model = build(STOCK_CONFIG)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in norms:
        m.momentum = None  # the first batch's statistics become the running ones
    with torch.no_grad():
        model.train()
        model._forward(torch.randn(2, 3, *IMAGE))
    for m in norms:
        m.momentum = 0.1
    head = model.decode_head
    head.pam.gamma.scale.data.fill_(0.6)
    head.cam.gamma.scale.data.fill_(0.4)
    return model.eval()


def fused_like(stock, plugin_config, backend):
    kwargs = {} if backend == "auto" else {"attention_backend": backend}
    model = build(plugin_config, **kwargs)
    model.load_state_dict(stock.state_dict(), strict=True)
    return model.train(stock.training)


def test_config_builds_the_fused_head(stock, plugin_config):
    fused = build(plugin_config)
    head = fused.decode_head
    assert type(head).__name__ == "FusedDAHead" and "danet_ops.mmseg" in sys.modules
    assert isinstance(head.pam, danet_ops.PAM) and isinstance(head.cam, danet_ops.CAM)
    assert head.pam.backend == head.cam.backend == "auto"
    assert type(stock.decode_head).__name__ == "DAHead"
    ref = stock.state_dict()
    got = fused.state_dict()
    assert list(got) == list(ref)
    assert all(got[k].shape == ref[k].shape for k in ref)


def test_checkpoints_load_strictly_both_ways(stock, plugin_config, tmp_path):
    fused = fused_like(stock, plugin_config, "auto")
    save_checkpoint({"meta": {}, "state_dict": stock.state_dict()}, str(tmp_path / "stock.pth"))
    save_checkpoint({"meta": {}, "state_dict": fused.state_dict()}, str(tmp_path / "fused.pth"))

    into_fused = build(plugin_config)
    load_checkpoint(into_fused, str(tmp_path / "stock.pth"), map_location="cpu", strict=True)
    into_stock = build(STOCK_CONFIG)
    load_checkpoint(into_stock, str(tmp_path / "fused.pth"), map_location="cpu", strict=True)
    for model in (into_fused, into_stock):
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in stock.state_dict().items())


def _predict(model, x, test_cfg):
    model.test_cfg = ConfigDict(test_cfg)
    with torch.no_grad():
        return torch.stack([sample.seg_logits.data for sample in model.predict(x)])


@pytest.mark.parametrize("mode", ["whole", "slide"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_matches_stock(stock, plugin_config, backend, mode):
    fused = fused_like(stock, plugin_config, backend)
    test_cfg = SLIDE if mode == "slide" else dict(mode="whole")
    x = torch.randn(2, 3, *IMAGE)
    ref = _predict(stock, x, test_cfg)
    out = _predict(fused, x, test_cfg)
    assert out.shape == ref.shape == (2, 19, *IMAGE)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def _input_grad(model, x, labels):
    x = x.clone().requires_grad_()
    samples = []
    shape = tuple(x.shape[2:])
    for label in labels:
        sample = SegDataSample(metainfo=dict(img_shape=shape, pad_shape=shape, ori_shape=shape))
        sample.gt_sem_seg = PixelData(data=label[None])
        samples.append(sample)
    losses = model.loss(x, samples)  # decode head (pam_cam, pam, cam) + auxiliary head
    total = sum(v for k, v in losses.items() if "loss" in k)
    total.backward()
    return total.detach(), x.grad


def test_training_input_gradient_float64(stock, plugin_config):
    # "chunked": danet_ops' own ops and autograd ("auto" would take the eager math here).
    ref_model = copy.deepcopy(stock).double().train()
    fused = fused_like(stock, plugin_config, "chunked").double().train()
    for model in (ref_model, fused):
        for m in model.modules():
            if isinstance(m, nn.Dropout2d):
                m.p = 0.0  # dropout off: the two models must see the same activations
    x = torch.randn(2, 3, *GRAD_IMAGE, dtype=torch.float64)
    labels = torch.randint(0, 19, (2, *GRAD_IMAGE))
    ref_loss, ref_grad = _input_grad(ref_model, x, labels)
    loss, grad = _input_grad(fused, x, labels)
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    assert (grad - ref_grad).abs().max() <= 1e-9 * ref_grad.abs().max()


def test_importing_danet_ops_does_not_import_mmseg():
    code = "import sys, danet_ops; assert 'mmseg' not in sys.modules and 'mmcv' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
