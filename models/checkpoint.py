"""Loading mmseg checkpoints (``{'state_dict': ..., 'meta': ...}`` or a bare state_dict).

Files are read with ``torch.load(weights_only=True)``: a checkpoint is data, and a
downloaded file must not be able to run code. Anything that is not a readable state_dict
gets a ``ValueError`` saying what was found.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, NamedTuple

import torch
from torch import Tensor, nn

# Prefixes training wrappers add to every key (DDP's "module.").
_WRAPPER_PREFIX = re.compile(r"^module\.")
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
# Keys shown per list in a mismatch error; strict=False returns the full lists.
_SHOWN_KEYS = 5


class LoadResult(NamedTuple):
    """Keys the checkpoint lacked, had in excess, or had with another shape (not loaded)."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    mismatched_keys: list[str]


def read_checkpoint(path_or_url: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Tensor]:
    """The state_dict stored at a local path or an http(s) URL (downloaded to the torch hub
    cache). Raises ``ValueError`` for a file that is missing, truncated or not a checkpoint."""
    source = os.fspath(path_or_url)
    if source.startswith(("http://", "https://")):
        try:
            obj = torch.hub.load_state_dict_from_url(
                source, map_location=map_location, weights_only=True
            )
        except Exception as err:  # network, HTTP, or the same unpickling errors as below
            raise ValueError(f"could not load checkpoint from {source}: {_reason(err)}") from err
    else:
        if os.path.isdir(source):
            inside = sorted(f for f in os.listdir(source) if f.endswith(_CHECKPOINT_SUFFIXES))
            listing = f" (checkpoints in it: {', '.join(inside[:5])})" if inside else ""
            raise ValueError(f"checkpoint path is a directory, not a file: {source}{listing}")
        if not os.path.isfile(source):
            raise ValueError(f"checkpoint file not found: {source}")
        try:
            obj = torch.load(source, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
            raise ValueError(f"{source} is not a readable PyTorch checkpoint: {_reason(err)}") from err
    return extract_state_dict(obj, source)


def _reason(err: Exception) -> str:
    """One line on why torch.load failed, instead of torch's page of advice."""
    text = str(err)
    if "Unsupported global" in text:
        found = text.split("Unsupported global:", 1)[1].split(" was not", 1)[0].strip()
        return (
            f"it holds a Python object ({found}) that weights_only=True refuses to import; "
            "if you trust the file, torch.load(path, weights_only=False) it yourself and pass "
            "the resulting dict to load_checkpoint"
        )
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0]
        return f"not a torch.save file, or corrupt ({detail})"
    if "zip archive" in text or isinstance(err, EOFError):
        return "the file is truncated or corrupt (could not read the archive)"
    first = text.strip().split("\n")[0][:200] if text.strip() else ""
    return f"{type(err).__name__}: {first}"


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The ``{name: tensor}`` state_dict inside a loaded checkpoint object.

    Accepts mmseg's ``{'state_dict': ..., 'meta': ...}``, a ``{'model': ...}`` dict, or a
    bare state_dict; strips DDP's ``module.`` prefix.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{source}: expected a dict (a state_dict or a checkpoint), got {type(obj).__name__}"
        )
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not obj:
        raise ValueError(f"{source}: the state_dict is empty")
    not_tensors = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if not_tensors:
        shown = ", ".join(map(repr, not_tensors[:5]))
        raise ValueError(
            f"{source}: expected a state_dict of {{name: tensor}}, but {len(not_tensors)} "
            f"entries are not (e.g. {shown}); top-level keys: {sorted(map(str, obj))[:10]}"
        )
    return {_WRAPPER_PREFIX.sub("", k): v for k, v in obj.items()}


def _listing(title: str, keys: list[str]) -> str:
    more = len(keys) - _SHOWN_KEYS
    shown = keys[:_SHOWN_KEYS] + ([f"... and {more} more"] if more > 0 else [])
    return f"{title} ({len(keys)}):\n    " + "\n    ".join(shown)


def _describe(model: nn.Module) -> str:
    """'DANet R-50-D8' for a DANet, the class name otherwise."""
    depth = getattr(getattr(model, "backbone", None), "depth", None)
    return f"{type(model).__name__} R-{depth}-D8" if isinstance(depth, int) else type(model).__name__


def _prefix_hint(own: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> str:
    """When the keys match after adding or removing one leading module name, say where."""
    for prefix in sorted({k.split(".", 1)[0] for k in own}):
        if all(f"{prefix}.{k}" in own for k in state):
            return f"its keys are model.{prefix}'s: load it with load_checkpoint(model.{prefix}, ...)"
    for prefix in sorted({k.split(".", 1)[0] for k in state}):
        if all(f"{prefix}.{k}" in state for k in own):
            return (f"the model's keys are in it under '{prefix}.': load a dict of its "
                    f"'{prefix}.' entries with that prefix removed")
    return ""


def _mismatch_message(
    model: nn.Module, own: Mapping[str, Tensor], state: Mapping[str, Tensor],
    missing: list[str], unexpected: list[str], mismatched: list[str],
) -> str:
    """A summary first (counts, and a guess when nothing matches), then the first few keys
    of each list: under 30 lines however large the models."""
    common = len(own) - len(missing)
    lines = [
        f"checkpoint does not match {type(model).__name__} (strict=True); nothing was loaded",
        f"{common} of the model's {len(own)} keys are in the checkpoint ({len(state)} keys): "
        f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} of another shape",
    ]
    hint = _prefix_hint(own, state)
    if hint:
        lines.append(hint)
    elif common == 0:
        lines.append(f"none of its {len(state)} keys match: is this a {_describe(model)} checkpoint?")
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatches", mismatched)):
        if keys:
            lines.append(_listing(title, keys))
    lines.append("strict=False loads the keys that fit and returns the full lists")
    return "\n  ".join(lines)


def load_checkpoint(
    model: nn.Module,
    path_or_url: str | os.PathLike | Mapping[str, Tensor],
    strict: bool = True,
    map_location: Any = "cpu",
) -> LoadResult:
    """Load an mmseg checkpoint (path, URL, or an already loaded dict) into ``model``.

    strict=True: any missing, unexpected or wrongly shaped key raises ``ValueError``
    summarising them (counts and the first few of each), and nothing is loaded.
    strict=False: loads the keys that fit (e.g. a backbone from a full model, or everything
    but the classifiers when the class count differs) and returns the rest in the
    ``LoadResult``.
    """
    if isinstance(path_or_url, Mapping):
        state = extract_state_dict(path_or_url)
    else:
        state = read_checkpoint(path_or_url, map_location)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if strict and (missing or unexpected or mismatched):
        raise ValueError(_mismatch_message(model, own, state, missing, unexpected, mismatched))
    bad = {m.split(":")[0] for m in mismatched}
    fitting = {k: v for k, v in state.items() if k in own and k not in bad}
    model.load_state_dict(fitting, strict=False)
    return LoadResult(missing, unexpected, sorted(bad))
