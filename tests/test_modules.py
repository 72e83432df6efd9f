"""PAM/CAM modules: drop-in for mmseg (state_dict keys, fixtures of the real mmseg), and
replace_attention for mmseg and official-DANet models."""
from pathlib import Path

import pytest
import torch
from helpers import grad_errs, rel_err
from torch import nn

import danet_ops

DATA = Path(__file__).parent / "data"


def _load(name):
    return torch.load(DATA / name, weights_only=True)


def _max_rel(out, ref):
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.mark.parametrize("backend", ["eager", "chunked"])
def test_pam_matches_mmseg_fixture(backend):
    fx = _load("pam_B2_C64_8x8.pt")
    module = danet_ops.PAM(**fx["init_kwargs"], backend=backend).eval()
    module.load_state_dict(fx["state_dict"], strict=True)
    assert list(module.state_dict()) == list(fx["state_dict"])
    with torch.no_grad():
        assert _max_rel(module(fx["input"]), fx["output"]) < 1e-4
    module = module.double()
    x = fx["input"].double().requires_grad_()
    out = module(x)
    assert _max_rel(out, fx["output_f64"]) < 1e-9
    loss = out.pow(2).sum()
    assert abs(loss.item() - fx["loss_f64"].item()) <= 1e-9 * fx["loss_f64"].item()
    loss.backward()
    assert _max_rel(x.grad, fx["grad_input_f64"]) < 1e-9
    biggest = max(g.abs().max().item() for g in fx["grad_params_f64"].values())
    for name, param in module.named_parameters():
        err = (param.grad - fx["grad_params_f64"][name]).abs().max().item() / biggest
        assert err < 1e-9, name


@pytest.mark.parametrize("fixture", ["cam_B2_C64_8x8.pt", "cam_B2_C64_8x8_tempered.pt"])
@pytest.mark.parametrize("backend", ["eager", "chunked"])
def test_cam_matches_mmseg_fixture(fixture, backend):
    fx = _load(fixture)
    module = danet_ops.CAM(backend=backend).eval()
    module.load_state_dict(fx["state_dict"], strict=True)
    with torch.no_grad():
        assert _max_rel(module(fx["input"]), fx["output"]) < 1e-4
    module = module.double()
    x = fx["input"].double().requires_grad_()
    out = module(x)
    assert _max_rel(out, fx["output_f64"]) < 1e-9
    out.pow(2).sum().backward()
    assert _max_rel(x.grad, fx["grad_input_f64"]) < 1e-9
    assert _max_rel(module.gamma.scale.grad, fx["grad_params_f64"]["gamma.scale"]) < 1e-9


def test_state_dict_keys_and_shapes_are_mmseg():
    pam, cam = danet_ops.PAM(512, 64), danet_ops.CAM()
    shapes = {k: tuple(v.shape) for k, v in pam.state_dict().items()}
    assert shapes == {
        "query_project.weight": (64, 512, 1, 1), "query_project.bias": (64,),
        "key_project.weight": (64, 512, 1, 1), "key_project.bias": (64,),
        "value_project.weight": (512, 512, 1, 1), "value_project.bias": (512,),
        "gamma.scale": (),
    }
    assert {k: tuple(v.shape) for k, v in cam.state_dict().items()} == {"gamma.scale": ()}
    assert pam.gamma.scale.item() == 0.0 and cam.gamma.scale.item() == 0.0
    assert all(type(m) is nn.Conv2d for m in (pam.query_project, pam.key_project, pam.value_project))


def test_pam_module_gradients_match_eager_in_float64():
    """Projection weights, biases, gamma and input: chunked module vs eager module."""
    eager = danet_ops.PAM(32, 4, backend="eager").double()
    eager.gamma.scale.data.fill_(0.8)
    fused = danet_ops.PAM(32, 4, backend="chunked").double()
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(3, 32, 13, 17, dtype=torch.float64)
    grads = []
    for module in (eager, fused):
        xi = x.clone().requires_grad_()
        out = module(xi)
        out.backward(torch.ones_like(out) + x)
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    assert max(grad_errs(grads[1], grads[0])) < 1e-10


# --- replace_attention: stand-ins with the real classes' names and attribute layout ---------


class _MMSegScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        return x * self.scale


class PAM(nn.Module):  # mmseg's layout: SelfAttentionBlock projections + gamma Scale
    def __init__(self, c, ch):
        super().__init__()
        self.query_project, self.key_project = nn.Conv2d(c, ch, 1), nn.Conv2d(c, ch, 1)
        self.value_project, self.gamma = nn.Conv2d(c, c, 1), _MMSegScale()

    def forward(self, x):
        b, c, h, w = x.shape
        out = danet_ops.position_attention_reference(
            self.query_project(x).flatten(2), self.key_project(x).flatten(2), self.value_project(x).flatten(2)
        )
        return self.gamma(out.view(b, c, h, w)) + x


class CAM(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = _MMSegScale()

    def forward(self, x):
        return danet_ops.channel_attention_reference(x.flatten(2), self.gamma.scale).view_as(x)


class PAM_Module(nn.Module):  # official DANet repo layout
    def __init__(self, c):
        super().__init__()
        self.query_conv, self.key_conv = nn.Conv2d(c, c // 8, 1), nn.Conv2d(c, c // 8, 1)
        self.value_conv, self.gamma = nn.Conv2d(c, c, 1), nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        out = danet_ops.position_attention_reference(
            self.query_conv(x).flatten(2), self.key_conv(x).flatten(2), self.value_conv(x).flatten(2)
        )
        return self.gamma * out.view(b, c, h, w) + x


class CAM_Module(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return danet_ops.channel_attention_reference(x.flatten(2), self.gamma).view_as(x)


@pytest.mark.parametrize("make", [lambda: nn.Sequential(PAM(32, 4), CAM()),
                                  lambda: nn.Sequential(PAM_Module(32), CAM_Module())])
def test_replace_attention_keeps_weights_and_outputs(make):
    model = make()
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 32, 6, 7)
    with torch.no_grad():
        before = model(x)
    replaced = danet_ops.replace_attention(model, backend="chunked")
    assert replaced is model
    assert isinstance(model[0], danet_ops.PAM) and isinstance(model[1], danet_ops.CAM)
    assert model[0].backend == "chunked"
    with torch.no_grad():
        after = model(x)
    assert rel_err(after, before) < 1e-5


def test_replace_attention_on_the_module_itself():
    old = PAM(16, 2)
    new = danet_ops.replace_attention(old)
    assert isinstance(new, danet_ops.PAM)
    old_sd, new_sd = old.state_dict(), new.state_dict()
    assert set(old_sd) == set(new_sd)
    assert all(torch.equal(old_sd[k], new_sd[k]) for k in old_sd)


def test_module_under_autocast_bf16():
    module = danet_ops.PAM(32, 4, backend="chunked")
    module.gamma.scale.data.fill_(0.5)
    x = torch.randn(1, 32, 9, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    ref = danet_ops.PAM(32, 4, backend="eager")
    ref.load_state_dict(module.state_dict())
    assert out.dtype == torch.float32  # mmseg's gamma(bf16 out) + fp32 x (tests/test_autocast.py)
    assert rel_err(out, ref.double()(x.double())) < 3e-2


@pytest.mark.parametrize(
    "make,error,words",
    [
        (lambda: danet_ops.PAM(64, 8, backend="bogus"), ValueError, ["backend", "'bogus'", "chunked"]),
        (lambda: danet_ops.CAM(backend="Triton"), ValueError, ["backend", "'Triton'"]),
        (lambda: danet_ops.CAM(backend=None), TypeError, ["backend", "NoneType"]),
        (lambda: danet_ops.PAM(64, 8.0), TypeError, ["channels", "8.0"]),
        (lambda: danet_ops.PAM(0, 8), ValueError, ["in_channels", "0"]),
        (
            lambda: danet_ops.replace_attention(nn.Sequential(PAM(32, 4)), backend="fast"),
            ValueError,
            ["backend", "'fast'"],
        ),
    ],
)
def test_module_arguments_are_checked_at_construction(make, error, words):
    with pytest.raises(error) as info:
        make()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize(
    "module,shape,words",
    [
        (
            lambda: danet_ops.PAM(64, 8),
            (64, 8, 8),
            ["[B, 64, H, W]", "(64, 8, 8)", "unbatched", "x.unsqueeze(0)"],
        ),
        (lambda: danet_ops.PAM(64, 8), (2, 64, 30), ["[B, 64, H, W]", "(2, 64, 30)", "x.unsqueeze(-1)"]),
        (lambda: danet_ops.PAM(64, 8), (2, 32, 4, 4), ["in_channels=64", "(2, 32, 4, 4)"]),
        (lambda: danet_ops.CAM(), (64, 8, 8), ["[B, C, H, W]", "(64, 8, 8)", "x.unsqueeze(0)"]),
        (lambda: danet_ops.CAM(), (64,), ["[B, C, H, W]", "(64,)"]),
    ],
)
def test_module_input_shape_errors_say_what_was_expected(module, shape, words):
    with pytest.raises(ValueError) as info:
        module()(torch.randn(shape))
    msg = str(info.value)
    assert "value must match query" not in msg
    for word in words:
        assert word in msg, (word, msg)
    unbatched = torch.randn(shape)
    if "x.unsqueeze(0)" in words:  # the fix it names works
        assert module()(unbatched.unsqueeze(0)).shape == (1, *shape)
