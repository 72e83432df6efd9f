"""A legend for a segmentation mask: one colour swatch and class name per row, as an RGB
array, drawn with a built-in 5x7 bitmap font (no Pillow or font files needed)."""
from __future__ import annotations

import numpy as np

# 5x7 glyphs, rows top to bottom. Text is drawn in upper case; characters without a glyph
# are drawn as "?".
_GLYPHS = {
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "####. ....# ....# .###. ....# ....# ####.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    " ": "..... ..... ..... ..... ..... ..... .....",
    "%": "##..# ##..# ...#. ..#.. .#... #..## #..##",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "-": "..... ..... ..... .###. ..... ..... .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "/": "....# ...#. ...#. ..#.. .#... .#... #....",
    "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
}
_FONT = {
    ch: np.array([[c == "#" for c in row] for row in rows.split()], dtype=bool)
    for ch, rows in _GLYPHS.items()
}
GLYPH_H, GLYPH_W = 7, 5


def render_text(text: str, scale: int = 2) -> np.ndarray:
    """[7·scale, 6·scale·len(text)] bool: True where ``text`` has ink (1 column of spacing)."""
    glyphs = [_FONT.get(ch, _FONT["?"]) for ch in text.upper()]
    spaced = [np.pad(g, ((0, 0), (0, 1))) for g in glyphs] or [np.zeros((GLYPH_H, 0), bool)]
    ink = np.concatenate(spaced, axis=1)
    return ink.repeat(scale, axis=0).repeat(scale, axis=1)


def legend(entries: list[tuple[str, tuple[int, int, int]]], scale: int = 2) -> np.ndarray:
    """[H, W, 3] uint8: one row per ``(label, rgb)`` entry, a swatch of the colour (black
    edged, so light colours show) then the label in black, on white."""
    pad, text_h = 2 * scale, GLYPH_H * scale
    row_h, swatch_w = text_h + 2 * pad, 3 * text_h
    texts = [render_text(label, scale) for label, _ in entries]
    width = pad + swatch_w + 2 * pad + max((t.shape[1] for t in texts), default=0) + 2 * pad
    image = np.full((row_h * len(entries) + pad, width, 3), 255, dtype=np.uint8)
    for i, ((_, colour), ink) in enumerate(zip(entries, texts)):
        top = i * row_h + pad
        image[top : top + text_h + 2, pad : pad + swatch_w] = 0  # edge
        image[top + 1 : top + text_h + 1, pad + 1 : pad + swatch_w - 1] = colour
        left = pad + swatch_w + 2 * pad
        image[top + 1 : top + 1 + text_h, left : left + ink.shape[1]][ink] = 0
    return image
