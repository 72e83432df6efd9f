"""models.load_checkpoint: mmseg checkpoint layouts load; mismatches and bad files give a
clear ValueError."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import models

DATA = Path(__file__).parent / "data"


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(seed: int) -> models.DANet:
    torch.manual_seed(seed)
    model = models.build_tiny_danet(num_classes=3, attention_backend="eager")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # every entry differs between seeds (no zeros or ones from init)
    return model


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("layout", ["mmseg", "bare", "ddp_prefix"])
def test_round_trip(tmp_path, layout):
    src, dst = tiny(1), tiny(2)
    state = src.state_dict()
    if layout == "mmseg":
        obj = {"meta": {"mmseg_version": "1.2.2", "iter": 40000}, "state_dict": state}
    elif layout == "bare":
        obj = state
    else:
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    assert not torch.equal(src.decode_head.conv_seg.weight, dst.decode_head.conv_seg.weight)
    result = models.load_checkpoint(dst, str(path), strict=True)
    assert result == models.LoadResult([], [], [])
    assert_same_state(src, dst)


def test_strict_lists_missing_unexpected_and_mismatched_keys(tmp_path):
    state = tiny(1).state_dict()
    del state["decode_head.pam.gamma.scale"], state["backbone.stem.0.weight"]
    state["decode_head.extra.weight"] = torch.randn(3)
    state["auxiliary_head.conv_seg.bias"] = torch.randn(7)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    dst = tiny(2)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError) as info:
        models.load_checkpoint(dst, path, strict=True)
    msg = str(info.value)
    assert "missing keys (2)" in msg
    assert "decode_head.pam.gamma.scale" in msg and "backbone.stem.0.weight" in msg
    assert "unexpected keys (1)" in msg and "decode_head.extra.weight" in msg
    assert "auxiliary_head.conv_seg.bias: checkpoint (7,), model (3,)" in msg
    after = dst.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was loaded

    result = models.load_checkpoint(dst, path, strict=False)
    assert sorted(result.missing_keys) == ["backbone.stem.0.weight", "decode_head.pam.gamma.scale"]
    assert result.unexpected_keys == ["decode_head.extra.weight"]
    assert result.mismatched_keys == ["auxiliary_head.conv_seg.bias"]
    assert torch.equal(dst.decode_head.conv_seg.weight, state["decode_head.conv_seg.weight"])
    assert torch.equal(dst.backbone.stem[0].weight, before["backbone.stem.0.weight"])


def test_mmseg_dahead_fixture_loads_from_a_dict():
    fix = torch.load(DATA / "dahead_small_B2_8x8.pt", weights_only=True)
    head = models.DAHead(64, 32, 8, 5, in_index=3, attention_backend="eager")
    models.load_checkpoint(head, {"state_dict": fix["state_dict"]}, strict=True)
    assert head.pam.gamma.scale.item() == 0.5 and head.cam.gamma.scale.item() == 0.75


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"state_dict": tiny(1).state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        models.load_checkpoint(tiny(2), path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        models.load_checkpoint(tiny(2), path)


def test_pickle_of_a_non_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.randn(3), torch.randn(4)], path)
    with pytest.raises(ValueError, match="expected a dict"):
        models.load_checkpoint(tiny(2), path)


class Foreign:
    """Stands for any class a checkpoint should not make us import and run."""


def test_pickle_of_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "foreign.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Foreign()}, f, protocol=2)
    with pytest.raises(ValueError, match="weights_only"):
        models.load_checkpoint(tiny(2), path)


def test_dict_without_tensors_and_missing_file(tmp_path):
    path = tmp_path / "config.pth"
    torch.save({"lr": 0.01, "iters": 40000}, path)
    with pytest.raises(ValueError, match="not .*tensor|are not"):
        models.load_checkpoint(tiny(2), path)
    with pytest.raises(ValueError, match="not found"):
        models.load_checkpoint(tiny(2), tmp_path / "nope.pth")


def test_another_models_state_dict_gets_a_short_summary():
    model = tiny(2)
    own = model.state_dict()
    # Another network's state_dict (torchvision-style names): not one key in common.
    other = {f"layer{i}.{j}.conv.weight": torch.randn(2) for i in range(4) for j in range(90)}
    with pytest.raises(ValueError) as info:
        models.load_checkpoint(model, other)
    msg = str(info.value)
    assert len(msg.splitlines()) < 30 and len(msg) < 2000, msg
    assert f"0 of the model's {len(own)} keys" in msg
    assert f"{len(own)} missing, 360 unexpected" in msg
    assert "none of its 360 keys match: is this a DANet R-50-D8 checkpoint?" in msg
    assert f"missing keys ({len(own)})" in msg and f"... and {len(own) - 5} more" in msg
    assert "unexpected keys (360)" in msg and "layer0.0.conv.weight" in msg and "... and 355 more" in msg
    assert "strict=False" in msg


def test_a_backbone_checkpoint_says_where_it_belongs():
    model = tiny(2)
    backbone = {k.removeprefix("backbone."): v for k, v in tiny(1).state_dict().items()
                if k.startswith("backbone.")}
    with pytest.raises(ValueError, match=r"model\.backbone's: load it with load_checkpoint\(model\.backbone"):
        models.load_checkpoint(model, backbone)
    models.load_checkpoint(model.backbone, backbone)  # the advice works
    with pytest.raises(ValueError, match="under 'backbone.'"):
        models.load_checkpoint(model.backbone, tiny(1).state_dict())


def test_a_directory_is_named_a_directory(tmp_path):
    torch.save(tiny(1).state_dict(), tmp_path / "latest.pth")
    with pytest.raises(ValueError) as info:
        models.load_checkpoint(tiny(2), tmp_path)
    msg = str(info.value)
    assert "is a directory, not a file" in msg and "not found" not in msg and "latest.pth" in msg
