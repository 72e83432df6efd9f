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
from models.classes import ADE20K, CITYSCAPES, class_names
from models.classes import VOC as VOC_NAMES
from models.image_io import palette_for, read_png, write_png
from models.legend import legend, render_text

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
    # Classes by name, and a legend beside the mask showing each colour of the mask.
    printed = proc.stdout.split("classes (share of pixels): ")[1].split("\n")[0]
    assert printed.split(" ")[0] in VOC_NAMES, printed
    legend_file = tmp_path / "street_danet_mask_legend.png"
    assert f"legend: {legend_file}" in proc.stdout
    assert {tuple(c) for c in mask.reshape(-1, 3)} <= {tuple(c) for c in read_png(legend_file).reshape(-1, 3)}


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


def run_demo(argv, capsys):
    """demo.main on argv: (exit code, stdout, stderr)."""
    try:
        code = demo.main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def without_pillow(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now fails, as if not installed


@pytest.mark.parametrize(
    "args,words",
    [
        (["--backend", "bogus"], ["--backend", "invalid choice: 'bogus'", "chunked"]),
        (["--backend", "triton", "--device", "cpu"], ["--backend triton", "cpu", "chunked"]),
        (["--backend", "cuda", "--device", "cpu"], ["--backend cuda", "cpu", "chunked"]),
        (["--device", "gpu"], ["--device 'gpu' is not a torch device"]),
        (["--device", "cuda"], ["--device cuda: no CUDA device", "--device cpu"]),
        (["--out", "{tmp}/missing/mask.png"], ["--out", "does not exist"]),
        (["--out", "{tmp}/mask.jpg"], ["--out", "mask.jpg", "needs Pillow", "pip install Pillow"]),
        (["--checkpoint", "{tmp}"], ["--checkpoint", "is a directory"]),
        (["--preset", "danet_r50"], ["--preset", "invalid choice"]),
    ],
)
def test_bad_arguments_end_in_one_line_and_exit_code_2(args, words, tmp_path, capsys, monkeypatch):
    if args[-1] == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    without_pillow(monkeypatch)
    image = tmp_path / "img.png"
    make_image(image, 16, 16)
    code, out, err = run_demo([image, "--device", "cpu", *[a.format(tmp=tmp_path) for a in args]], capsys)
    assert code == 2
    assert "Traceback" not in err and out == ""
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and error_lines[0].startswith("python -m models.demo: error: "), err
    for word in words:
        assert word in error_lines[0], (word, err)


@pytest.mark.parametrize("name,words", [("photo.jpg", ["photo.jpg", "needs Pillow"]),
                                        ("missing.png", ["missing.png", "not found"]),
                                        ("folder", ["folder", "is a directory"])])
def test_unreadable_images_are_named(name, words, tmp_path, capsys, monkeypatch):
    without_pillow(monkeypatch)
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))  # a JPEG header
    (tmp_path / "folder").mkdir()
    code, _, err = run_demo([tmp_path / name, "--device", "cpu"], capsys)
    assert code == 2 and "Traceback" not in err
    for word in words:
        assert word in err.splitlines()[-1], (word, err)


def test_cli_error_has_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "models.demo", str(tmp_path / "none.png"), "--backend", "bogus"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("python -m models.demo: error: argument --backend")


def test_out_option_writes_mask_and_legend_there(tmp_path, capsys):
    image = tmp_path / "img.png"
    make_image(image, 24, 32)
    (tmp_path / "results").mkdir()
    out = tmp_path / "results" / "seg.png"
    code, stdout, _ = run_demo([image, "--out", out, "--preset", VOC, "--backend", "eager",
                                "--device", "cpu"], capsys)
    assert code == 0
    assert read_png(out).shape == (24, 32, 3)
    assert read_png(tmp_path / "results" / "seg_legend.png").ndim == 3
    assert not (tmp_path / "img_danet_mask.png").exists()
    assert f"mask: {out}" in stdout and "legend:" in stdout


def test_class_names_per_dataset():
    assert (len(CITYSCAPES), len(VOC_NAMES), len(ADE20K)) == (19, 21, 150)
    assert len(set(ADE20K)) == 150 and all(n == n.strip() and n for n in ADE20K)
    assert CITYSCAPES[0] == "road" and VOC_NAMES[0] == "background" and ADE20K[:2] == ("wall", "building")
    for preset in models.PRESETS.values():  # every preset's dataset has its names
        assert class_names(preset.dataset, preset.num_classes)[0] in ("road", "background", "wall")
    assert class_names("cityscapes", 5) == [f"class {i}" for i in range(5)]  # fine-tuned head


def test_legend_draws_each_colour_and_its_label():
    rows = [("road 51%", (128, 64, 128)), ("sky <1%", (70, 130, 180))]
    image = legend(rows)
    assert image.dtype == np.uint8 and image.ndim == 3
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert {(128, 64, 128), (70, 130, 180), (0, 0, 0), (255, 255, 255)} <= colours
    ink = render_text("road 51%")
    assert ink.shape == (14, 12 * 8) and ink.any()
    assert not np.array_equal(render_text("a"), render_text("b"))
    assert np.array_equal(render_text("<"), render_text("<"))
    assert not np.array_equal(render_text("<"), render_text("~"))
