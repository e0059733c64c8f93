"""Scenes (what is in a picture), layouts (where, in pixels) and rendering (the PNG).

A *scene* is the semantic content: 1-4 objects, each with a shape, colour, size and a cell of a 3x3 grid, and
optionally a three-letter word on a white sign across the bottom row. A *picture* is one rendering of a scene:
its variant seed fixes the pixel jitter, background and colour shade, so near-duplicate pictures share a scene
and differ only in pixels. The grid is aligned so that at 24 px (8 px patches) each cell is exactly one patch,
and each letter of the word sits in one patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from vlselect.world.vocab import COLOR_NAMES, COLORS, FONT_5X7, POSITIONS, SHAPES, SIZES, WORDS

#: Object extent as a fraction of the cell side, per size.
SIZE_FRACTION = {"small": 0.55, "large": 0.85}
#: Background noise amplitude (grey levels) per source style.
NOISE_AMPLITUDE = {"clean": 5, "noisy": 18}
WORD_ROW = 2  # the sign occupies the bottom row
WORD_CELLS = (6, 7, 8)


@dataclass(frozen=True, order=True)
class Obj:
    """One object: ``cell`` is 0..8, row-major on the 3x3 grid."""

    shape: str
    color: str
    size: str
    cell: int

    @property
    def pos(self) -> str:
        return POSITIONS[self.cell]

    def phrase(self, with_size: bool = True) -> str:
        return f"{self.size} {self.color} {self.shape}" if with_size else f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """The content of a picture: objects sorted by cell, and an optional word (lower case)."""

    objects: tuple[Obj, ...]
    word: str | None = None

    def signature(self) -> tuple:
        return (tuple(sorted(self.objects)), self.word)

    def at(self, cell: int) -> Obj | None:
        for o in self.objects:
            if o.cell == cell:
                return o
        return None

    def with_shape(self, shape: str) -> list[Obj]:
        return [o for o in self.objects if o.shape == shape]

    def with_color(self, color: str) -> list[Obj]:
        return [o for o in self.objects if o.color == color]

    def find(self, color: str, shape: str) -> Obj | None:
        for o in self.objects:
            if o.color == color and o.shape == shape:
                return o
        return None

    def to_meta(self, boxes: list[list[float]] | None = None) -> dict:
        objs = []
        for i, o in enumerate(self.objects):
            d = {"shape": o.shape, "color": o.color, "size": o.size, "pos": o.pos}
            if boxes is not None:
                d["box"] = boxes[i]
            objs.append(d)
        return {"objects": objs, "word": self.word}


def sample_scene(
    rng: np.random.Generator,
    n_objects: int | None = None,
    word: bool = False,
    max_objects: int = 4,
) -> Scene:
    """Draw a scene: ``n_objects`` (default 1..max_objects) in distinct cells with distinct (colour, shape)
    pairs; with ``word``, objects stay off the bottom row, which carries the sign."""
    cells = np.arange(6) if word else np.arange(9)
    n = int(rng.integers(1, max_objects + 1)) if n_objects is None else n_objects
    chosen = sorted(int(c) for c in rng.choice(cells, size=n, replace=False))
    pairs = rng.choice(len(SHAPES) * len(COLOR_NAMES), size=n, replace=False)
    objs = []
    for cell, pair in zip(chosen, pairs):
        shape = SHAPES[int(pair) // len(COLOR_NAMES)]
        color = COLOR_NAMES[int(pair) % len(COLOR_NAMES)]
        size = SIZES[int(rng.integers(0, 2))]
        objs.append(Obj(shape, color, size, cell))
    w = WORDS[int(rng.integers(0, len(WORDS)))] if word else None
    return Scene(tuple(objs), w)


def easy_scene(rng: np.random.Generator) -> Scene:
    """A trivially easy scene: one large object in the centre, no word."""
    return Scene((Obj(SHAPES[int(rng.integers(0, 4))], COLOR_NAMES[int(rng.integers(0, 5))], "large", 4),), None)


def is_easy(scene: Scene) -> bool:
    return scene.word is None and len(scene.objects) == 1 and scene.objects[0].cell == 4 and \
        scene.objects[0].size == "large"


def _cell_bounds(index: int, image_size: int) -> tuple[int, int]:
    return round(index * image_size / 3), round((index + 1) * image_size / 3)


def layout(scene: Scene, variant: int, image_size: int) -> list[tuple[int, int, int, int]]:
    """Pixel boxes ``(x0, y0, x1, y1)`` (end exclusive) of the scene's objects in the picture ``variant``."""
    rng = np.random.default_rng([variant, 1])
    boxes = []
    for o in scene.objects:
        r, c = divmod(o.cell, 3)
        x0c, x1c = _cell_bounds(c, image_size)
        y0c, y1c = _cell_bounds(r, image_size)
        side = min(x1c - x0c, y1c - y0c)
        e = max(3, round(SIZE_FRACTION[o.size] * side))
        free_x, free_y = (x1c - x0c) - e, (y1c - y0c) - e
        jit = 1 if o.size == "large" else 3
        ox = int(np.clip(free_x // 2 + rng.integers(-jit, jit + 1), min(1, free_x), max(free_x - 1, 0)))
        oy = int(np.clip(free_y // 2 + rng.integers(-jit, jit + 1), min(1, free_y), max(free_y - 1, 0)))
        boxes.append((x0c + ox, y0c + oy, x0c + ox + e, y0c + oy + e))
    return boxes


def normalise_box(box: tuple[int, int, int, int], image_size: int) -> list[float]:
    """DataOptim's normalised box (§6 of ``specs/dataoptim.md``): ``[x1, y1, x2, y2]`` in [0, 1], 2 decimals."""
    return [round(v / image_size, 2) for v in box]


def format_box(box: list[float]) -> str:
    """The box as text, ``[x1, y1, x2, y2]`` with ``", "`` separators and two decimals (e.g. ``0.05``)."""
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


@lru_cache(maxsize=None)
def shape_mask(shape: str, e: int) -> np.ndarray:
    """Boolean ``e x e`` mask of a shape (cached: pictures share their masks)."""
    yy, xx = np.mgrid[0:e, 0:e].astype(np.float64) + 0.5
    if shape == "circle":
        m = (xx - e / 2) ** 2 + (yy - e / 2) ** 2 <= (e / 2) ** 2
    elif shape == "square":
        m = np.ones((e, e), dtype=bool)
    elif shape == "triangle":  # apex up (at least 2 px wide, so the box is tight), base at the bottom
        m = np.abs(xx - e / 2) <= np.maximum(yy / 2, 1.0)
    elif shape == "cross":
        t = e / 3
        m = (np.abs(xx - e / 2) <= t / 2 + 0.01) | (np.abs(yy - e / 2) <= t / 2 + 0.01)
    else:  # pragma: no cover - guarded by the vocabulary
        raise ValueError(shape)
    return m


@lru_cache(maxsize=None)
def glyph(letter: str, w: int, h: int) -> np.ndarray:
    """Boolean ``h x w`` bitmap of an upper-case letter, scaled from the 5x7 font by nearest neighbour."""
    rows = FONT_5X7[letter.upper()]
    base = np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)
    yi = (np.arange(h) * 7 // h).clip(0, 6)
    xi = (np.arange(w) * 5 // w).clip(0, 4)
    return base[yi][:, xi]


def render(scene: Scene, variant: int, image_size: int, style: str = "clean") -> np.ndarray:
    """Render a picture as an ``(S, S, 3)`` uint8 array. Deterministic in ``(scene, variant, style)``."""
    S = image_size
    rng = np.random.default_rng([variant, 2])
    bg = int(rng.integers(35, 70))
    amp = NOISE_AMPLITUDE[style]
    noise = rng.integers(-amp, amp + 1, size=(S, S, 1), dtype=np.int16)
    img = np.empty((S, S, 3), dtype=np.int16)
    img[...] = bg
    img += noise
    for o, (x0, y0, x1, y1) in zip(scene.objects, layout(scene, variant, S)):
        shade = rng.integers(-12, 13, size=3)
        col = np.clip(np.array(COLORS[o.color]) + shade, 0, 255).astype(np.int16)
        m = shape_mask(o.shape, x1 - x0)
        region = img[y0:y1, x0:x1]
        region[m] = col
    if scene.word is not None:
        y0b, y1b = _cell_bounds(WORD_ROW, S)
        y0b, y1b = y0b + 1, y1b - 1
        img[y0b:y1b, 1 : S - 1] = 235
        bh = y1b - y0b
        for k, letter in enumerate(scene.word):
            x0c, x1c = _cell_bounds(k, S)
            gw = max(5, round(0.6 * (x1c - x0c)))
            gh = max(7, round(0.8 * bh))
            g = glyph(letter, gw, gh)
            gx = x0c + ((x1c - x0c) - gw) // 2
            gy = y0b + (bh - gh) // 2
            region = img[gy : gy + gh, gx : gx + gw]
            region[g] = 20
    return np.clip(img, 0, 255).astype(np.uint8)
