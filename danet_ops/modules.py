"""``PAM`` and ``CAM`` modules, drop-in for mmsegmentation's, and a helper to swap them in.

Same constructor arguments and state_dict keys as ``mmseg.models.decode_heads.da_head``:
``query_project``/``key_project``/``value_project`` are plain 1x1 ``nn.Conv2d`` with bias
and ``gamma.scale`` is a 0-dim parameter initialised to 0, so an mmseg state_dict loads
with ``strict=True``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from danet_ops.backends import check_name
from danet_ops.functional import channel_attention, position_attention


class Scale(nn.Module):
    """A learnable scalar (mmcv's ``Scale``): the state_dict key is ``scale``, 0-dim."""

    def __init__(self, scale: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _check_channels(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")


def _check_input(module: str, x: object, channels: int | None = None) -> None:
    """x must be ``[B, C, H, W]`` (with ``channels`` channels, when given); a 3-D tensor
    gets a hint on how to add the missing dimension."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{module} expects x as a torch.Tensor, got {type(x).__name__}")
    shape = tuple(x.shape)
    expected = f"[B, {channels}, H, W]" if channels else "[B, C, H, W]"
    if x.dim() == 4 and (channels is None or shape[1] == channels):
        return
    hints = []
    if x.dim() == 3 and (channels is None or shape[0] == channels):
        hints.append("for one unbatched [C, H, W] image add the batch dimension with x.unsqueeze(0)")
    if x.dim() == 3 and (channels is None or shape[1] == channels):
        hints.append("for [B, C, N] positions use x.unsqueeze(-1) ([B, C, N, 1])")
    raise ValueError(
        f"{module} expects x of shape {expected}, got {shape}" + "".join(f"; {h}" for h in hints)
    )


class PAM(nn.Module):
    """Position attention: ``gamma · softmax(qᵀk) · v + x`` over all H·W positions.

    Args:
        in_channels: channels of x (and of v and the output).
        channels: channels of the query and key projections (mmseg: in_channels // 8).
        backend: see ``danet_ops.position_attention``.
    """

    def __init__(self, in_channels: int, channels: int, backend: str = "auto") -> None:
        super().__init__()
        _check_channels("in_channels", in_channels)
        _check_channels("channels", channels)
        self.in_channels, self.channels, self.backend = in_channels, channels, check_name(backend)
        # Registration order as in mmseg (key first), so state_dicts list the same keys in the same order.
        self.key_project = nn.Conv2d(in_channels, channels, 1)
        self.query_project = nn.Conv2d(in_channels, channels, 1)
        self.value_project = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = Scale(0.0)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[B, in_channels, H, W]`` -> same shape and dtype.

        Under autocast the projections come out in half; the result has the dtype of
        ``half + x``, as mmseg's ``gamma(out) + x`` (fp32 for an fp32 x).
        """
        _check_input(f"PAM(in_channels={self.in_channels})", x, self.in_channels)
        return position_attention(
            self.query_project(x), self.key_project(x), self.value_project(x),
            gamma=self.gamma.scale, residual=x, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, channels={self.channels}, backend={self.backend!r}"


class CAM(nn.Module):
    """Channel attention: ``gamma · softmax(-X Xᵀ) · X + x`` over the C channels."""

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        self.backend = check_name(backend)
        self.gamma = Scale(0.0)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[B, C, H, W]`` -> same shape and dtype (``channel_attention`` takes ``[B, C, N]``).

        Under autocast the attention runs in half and ``gamma·out + x`` promotes back to x's
        dtype, as in mmseg."""
        _check_input("CAM", x)
        return channel_attention(x, gamma=self.gamma.scale, backend=self.backend)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


def _official_gamma_to_scale(gamma: nn.Parameter) -> Scale:
    scale = Scale(0.0)
    scale.scale = nn.Parameter(gamma.detach().reshape(()).clone(), requires_grad=gamma.requires_grad)
    return scale


def _convert(child: nn.Module, backend: str) -> nn.Module | None:
    """The danet_ops twin of an mmseg or official-DANet attention module, or None."""
    name = type(child).__name__
    if isinstance(child, (PAM, CAM)):
        return None
    if name == "PAM" and hasattr(child, "query_project"):  # mmseg
        q = child.query_project
        new = PAM(q.in_channels, q.out_channels, backend)
        new.load_state_dict(child.state_dict(), strict=True)
    elif name == "PAM_Module" and hasattr(child, "query_conv"):  # official DANet repo
        q = child.query_conv
        new = PAM(q.in_channels, q.out_channels, backend)
        new.query_project = child.query_conv
        new.key_project = child.key_conv
        new.value_project = child.value_conv
        new.gamma = _official_gamma_to_scale(child.gamma)
    elif name == "CAM" and hasattr(child, "gamma") and isinstance(child.gamma, nn.Module):  # mmseg
        new = CAM(backend)
        new.load_state_dict(child.state_dict(), strict=True)
    elif name == "CAM_Module" and isinstance(getattr(child, "gamma", None), nn.Parameter):
        new = CAM(backend)
        new.gamma = _official_gamma_to_scale(child.gamma)
    else:
        return None
    first = next(child.parameters(), None)
    if first is not None:
        new.to(device=first.device, dtype=first.dtype)
    new.train(child.training)
    return new


def replace_attention(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Swap, in place and keeping weights, every mmseg ``PAM``/``CAM`` and official-DANet
    ``PAM_Module``/``CAM_Module`` in ``model`` for danet_ops' fused modules.

    Returns ``model`` (or the replacement, when ``model`` itself is one of them).
    Note: the official modules' ``gamma`` of shape (1,) becomes a 0-dim ``gamma.scale``,
    so their state_dict keys change to mmseg's.
    """
    check_name(backend)
    top = _convert(model, backend)
    if top is not None:
        return top
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            new = _convert(child, backend)
            if new is not None:
                setattr(parent, child_name, new)
    return model
