"""Reading images and writing colour-coded masks without extra dependencies.

PNG (8/16-bit grey, grey+alpha, RGB, RGBA, palette; not interlaced) and binary PPM are
decoded here with zlib + numpy, and masks written as PNG; other formats (JPEG, ...) are
read and written through Pillow when it is installed, and say so when it is not.
"""
from __future__ import annotations

import importlib.util
import os
import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class NeedsPillowError(ValueError):
    """A format (or PNG variant) that only Pillow reads or writes, and Pillow is missing."""


def _pillow(what: str):
    """PIL.Image, or NeedsPillowError saying that ``what`` needs it."""
    try:
        from PIL import Image
    except ImportError:
        raise NeedsPillowError(
            f"{what} needs Pillow (pip install Pillow); PNG (and PPM, for reading) work without it"
        ) from None
    return Image


#: Cityscapes' 19 train-id colours (its official label colours).
CITYSCAPES_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]


def bit_palette(num_classes: int) -> np.ndarray:
    """Pascal VOC's colour map: class bits spread over the high bits of R, G, B; [K, 3] uint8."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    return colours


def palette_for(num_classes: int) -> np.ndarray:
    """[K, 3] uint8 colours: Cityscapes' for 19 classes, VOC's bit palette otherwise."""
    if num_classes == len(CITYSCAPES_PALETTE):
        return np.array(CITYSCAPES_PALETTE, dtype=np.uint8)
    return bit_palette(num_classes)


def colorize(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """[H, W] class indices -> [H, W, 3] uint8 RGB (indices outside 0..K-1 are black)."""
    colours = np.concatenate([palette_for(num_classes), np.zeros((1, 3), np.uint8)])
    index = np.where((mask >= 0) & (mask < num_classes), mask, num_classes)
    return colours[index]


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an [H, W, 3] (or [H, W]) uint8 array as an 8-bit PNG."""
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3) or (rgb.ndim == 3 and rgb.shape[2] != 3):
        raise ValueError(f"rgb must be uint8 [H, W, 3] or [H, W], got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    colour_type = 2 if rgb.ndim == 3 else 0
    rows = np.ascontiguousarray(rgb).reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0
    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(PNG_SIGNATURE + _chunk(b"IHDR", header))
        f.write(_chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(data: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth) -> [H, stride] uint8."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size < height * (stride + 1):
        raise ValueError("PNG image data is truncated")
    buf = buf[: height * (stride + 1)].reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, row = buf[y, 0], buf[y, 1:].astype(np.int32)
        if kind == 0:
            cur = row
        elif kind == 1:  # Sub: running sum along each byte lane of a pixel
            cur = np.cumsum(row.reshape(-1, bpp), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            cur = (row + prev) % 256
        elif kind in (3, 4):  # Average, Paeth: depend on the reconstructed left pixel
            cur = row.copy()
            left = np.zeros(bpp, dtype=np.int32)
            up_left = np.zeros(bpp, dtype=np.int32)
            for x in range(0, stride, bpp):
                up = prev[x : x + bpp]
                pred = (left + up) // 2 if kind == 3 else _paeth(left, up, up_left)
                cur[x : x + bpp] = (row[x : x + bpp] + pred) % 256
                left, up_left = cur[x : x + bpp], up
        else:
            raise ValueError(f"PNG row {y} has unknown filter type {kind}")
        out[y] = prev = cur
    return out.astype(np.uint8)


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Decode a non-interlaced PNG to [H, W, 3] uint8 RGB (alpha dropped, grey expanded)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    pos, idat, palette, header = 8, [], None, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise ValueError(f"{path}: PNG without IHDR or image data")
    width, height, depth, colour_type, _, _, interlace = header
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour_type)
    if channels is None or interlace or depth not in (8, 16) or (colour_type == 3 and depth != 8):
        raise NeedsPillowError(
            f"{path}: this PNG (colour type {colour_type}, bit depth {depth}, interlace "
            f"{interlace}) needs Pillow to read (pip install Pillow)"
        )
    bpp = channels * depth // 8
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as err:
        raise ValueError(f"{path}: corrupt PNG image data ({err})") from err
    pixels = _unfilter(raw, height, width * bpp, bpp).reshape(height, width, bpp)
    if depth == 16:
        pixels = pixels[:, :, 0::2]  # keep the high byte of each big-endian sample
    if colour_type == 3:
        if palette is None:
            raise ValueError(f"{path}: palette PNG without PLTE chunk")
        return palette[pixels[:, :, 0]]
    if channels <= 2:
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


def read_ppm(path: str | os.PathLike) -> np.ndarray:
    """Decode a binary (P6) 8-bit PPM to [H, W, 3] uint8."""
    with open(path, "rb") as f:
        data = f.read()
    fields, pos = [], 0
    while len(fields) < 4:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while end < len(data) and not data[end : end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    if fields[0] != b"P6" or int(fields[3]) != 255:
        raise NeedsPillowError(
            f"{path}: only binary 8-bit PPM (P6, maxval 255) is read without Pillow (pip install Pillow)"
        )
    width, height = int(fields[1]), int(fields[2])
    pixels = np.frombuffer(data[pos + 1 : pos + 1 + width * height * 3], dtype=np.uint8)
    return pixels.reshape(height, width, 3)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """[H, W, 3] uint8 RGB from PNG/PPM (built in) or anything Pillow reads, if installed."""
    with open(path, "rb") as f:
        head = f.read(8)
    builtin = read_png if head.startswith(PNG_SIGNATURE) else read_ppm if head.startswith(b"P6") else None
    if builtin is not None:
        try:
            return builtin(path)
        except NeedsPillowError:  # a variant the built-in decoders skip: Pillow, if it is there
            if importlib.util.find_spec("PIL") is None:
                raise
    with _pillow(f"reading {path} (not PNG or PPM)").open(path) as im:
        return np.asarray(im.convert("RGB"))


def _is_png(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(".png")


def check_writable(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless ``write_image`` can write ``path``'s format (by its
    extension): PNG always, others when Pillow is installed and knows the extension."""
    if _is_png(path):
        return
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in _pillow(f"writing {path} (not PNG)").registered_extensions():
        raise ValueError(f"{path}: unknown image extension {ext or '(none)'!r}; use .png")


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write [H, W, 3] uint8 RGB: PNG built in, other formats (by extension) through Pillow."""
    if _is_png(path):
        write_png(path, rgb)
    else:
        _pillow(f"writing {path} (not PNG)").fromarray(rgb).save(path)
