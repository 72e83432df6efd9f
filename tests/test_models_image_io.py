"""models.image_io: the dependency-free PNG reader/writer and the class palettes."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from models.image_io import bit_palette, colorize, palette_for, read_image, read_png, write_png


def encode_png(pixels: np.ndarray, colour_type: int, filters: list[int]) -> bytes:
    """A reference PNG encoder applying the given filter type to each row (spec §9)."""
    h, w = pixels.shape[:2]
    bpp = pixels.shape[2] if pixels.ndim == 3 else 1
    rows = pixels.reshape(h, w * bpp).astype(np.int64)
    out = b""
    prev = np.zeros(w * bpp, np.int64)
    for y in range(h):
        cur, kind = rows[y], filters[y % len(filters)]
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros_like(cur)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - up_left
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - up_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, up_left))
        out += bytes([kind]) + ((cur - pred) % 256).astype(np.uint8).tobytes()
        prev = cur

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    idat = zlib.compress(out)
    # split the data over two IDAT chunks, as encoders may
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat[:10])
            + chunk(b"IDAT", idat[10:]) + chunk(b"IEND", b""))


@pytest.mark.parametrize("colour_type,channels", [(2, 3), (6, 4), (0, 1)])
def test_reader_undoes_every_filter(tmp_path, colour_type, channels):
    rng = np.random.default_rng(0)
    shape = (9, 11, channels) if channels > 1 else (9, 11)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "f.png"
    path.write_bytes(encode_png(pixels, colour_type, [0, 1, 2, 3, 4]))
    rgb = read_image(path)
    if channels == 1:
        expected = np.repeat(pixels[:, :, None], 3, axis=2)
    else:
        expected = pixels[:, :, :3]
    assert rgb.shape == (9, 11, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, expected)


def test_write_then_read_round_trip(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    write_png(tmp_path / "x.png", rgb)
    assert np.array_equal(read_png(tmp_path / "x.png"), rgb)


def test_ppm_and_bad_files(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    (tmp_path / "x.ppm").write_bytes(b"P6\n# comment\n7 5\n255\n" + rgb.tobytes())
    assert np.array_equal(read_image(tmp_path / "x.ppm"), rgb)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ValueError):
        read_png(tmp_path / "bad.png")


def test_palettes():
    city = palette_for(19)
    assert tuple(city[0]) == (128, 64, 128) and tuple(city[18]) == (119, 11, 32)
    voc = bit_palette(21)
    assert [tuple(c) for c in voc[:4]] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert len({tuple(c) for c in bit_palette(150)}) == 150  # ADE20K: all distinct
    mask = np.array([[0, 1], [18, 255]])
    colours = colorize(mask, 19)
    assert tuple(colours[0, 1]) == (244, 35, 232) and tuple(colours[1, 1]) == (0, 0, 0)
