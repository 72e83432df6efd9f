"""``python -m models.demo``: segments an image file and writes a colour mask next to it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models import demo
from models.image_io import palette_for, read_png, write_png

ROOT = Path(__file__).resolve().parents[1]
VOC = "danet_r50-d8_4xb4-20k_voc12aug-512x512"


pytestmark = pytest.mark.usefixtures("single_thread")


def make_image(path: Path, h: int = 40, w: int = 56) -> np.ndarray:
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    write_png(path, rgb)
    return rgb


def test_cli_with_random_weights(tmp_path):
    image = tmp_path / "street.png"
    make_image(image)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "models.demo", str(image), "--preset", VOC, "--backend", "chunked",
         "--device", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM" in proc.stdout and "random" in proc.stdout.lower()
    out = tmp_path / "street_danet_mask.png"
    assert f"mask: {out}" in proc.stdout
    mask = read_png(out)
    assert mask.shape == (40, 56, 3)
    voc_colours = {tuple(c) for c in palette_for(21)}
    assert {tuple(c) for c in mask.reshape(-1, 3)} <= voc_colours


def test_with_checkpoint_matches_direct_segmentation(tmp_path, capsys):
    image = tmp_path / "img.png"
    rgb = make_image(image, 32, 48)
    torch.manual_seed(5)
    model = models.build_danet(VOC, attention_backend="eager")
    with torch.no_grad():
        model.decode_head.pam.gamma.scale.fill_(0.5)
        model.decode_head.cam.gamma.scale.fill_(0.5)
    ckpt = tmp_path / "danet.pth"
    torch.save({"meta": {"note": "test"}, "state_dict": model.state_dict()}, ckpt)

    assert demo.main([str(image), "--checkpoint", str(ckpt), "--preset", VOC,
                      "--backend", "eager", "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    assert f"weights: {ckpt}" in stdout and "RANDOM" not in stdout

    model.eval()
    labels = models.segment(model, torch.from_numpy(rgb).permute(2, 0, 1)[None], VOC, resize=False)
    assert len(labels.unique()) > 1
    expected = palette_for(21)[labels[0].numpy()]
    assert np.array_equal(read_png(tmp_path / "img_danet_mask.png"), expected)
