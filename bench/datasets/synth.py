"""Embedded synthetic datasets mirroring the ImageNet ∪ PASS case study (no download).

Two kinds of image, drawn with numpy from a seed (64×64 RGB uint8):

* ``object`` images: one shape (circle, square, triangle, star, ring, cross) with a colour
  and a texture on a simple background, or a large drawn person (class ``person``). A
  smaller person stands beside the shape in ``PERSON_SHARE`` of the shape images, as
  people do in ImageNet.
* ``scene`` images: mountains, sea, forest, city, desert; no people.

``synth-passnet`` has two sources that, like ImageNet and PASS, overlap in content and
differ in emphasis and in people:

* group 0, ``objects`` (ImageNet-like): mostly object images (with people as above) and a
  share ``MIX`` of scenes.
* group 1, ``scenes`` (PASS-like, no people): mostly scenes and a share ``MIX`` of object
  images drawn from the same generator with the people left out (no ``person`` class, no
  person beside a shape). The only people here are ``N_EDGE_CASES`` planted in scenes,
  listed in ``notes["edge_cases"]``.

So every style and every non-person concept occurs in both sources; people are the one
concept only the ImageNet-like source has (``notes["planted"]``), which is what a method
that finds dataset-specific concepts should find. Its people wear pink (``CLOTHES``), a
colour no shape or scene has, so they are visible to patch-level features of the offline
default backbone (a random-init ViT, no semantics); ``synth-shift`` keeps the object
colours for clothes.

Ground truth per image: a global class label, a multi-hot concept vector (concept groups
object, colour, texture, background, person; what QRP probes), the group, whether it is a
scene (``notes["is_scene"]``), and planted near-duplicate pairs (exact copies and slightly
perturbed copies: noise, a 1 px shift or a brightness change), both members with the same
label and concepts.

Classes are separable on purpose but not trivially: each shape class prefers one colour
(``P_PREFERRED_COLOUR``), yet colour, texture, background, position, size, rotation,
brightness and pixel noise all vary, so raw-pixel k-means is well above chance and well
below perfect.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import numpy as np

from bench.datasets.base import DatasetSpec, ImageSource, content_revision
from bench.errors import BenchError

SIZE = 64
OBJECT_CLASSES = ["circle", "square", "triangle", "star", "ring", "cross", "person"]
SCENE_CLASSES = ["mountains", "sea", "forest", "city", "desert"]
CLASS_NAMES = OBJECT_CLASSES + SCENE_CLASSES
GROUP_NAMES = ["objects", "scenes"]

CONCEPTS: dict[str, list[str]] = {
    "object": ["circle", "square", "triangle", "star", "ring", "cross",
               "mountain", "wave", "island", "tree", "building", "dune", "sun", "cloud", "cactus"],
    "colour": ["red", "orange", "yellow", "green", "blue", "purple", "white", "grey", "black", "brown"],
    "texture": ["plain", "striped", "dotted", "checkered"],
    "background": ["wall", "gradient", "tabletop", "sky", "night-sky", "water", "grass", "sand",
                   "snow", "rock"],
    "person": ["person"],
}
CONCEPT_NAMES: list[str] = []
CONCEPT_GROUPS: dict[str, list[int]] = {}
for _group, _names in CONCEPTS.items():
    CONCEPT_GROUPS[_group] = list(range(len(CONCEPT_NAMES), len(CONCEPT_NAMES) + len(_names)))
    CONCEPT_NAMES += [f"{_group}:{n}" for n in _names]
_CI = {name: i for i, name in enumerate(CONCEPT_NAMES)}

RGB = {
    "red": (210, 40, 40), "orange": (240, 140, 30), "yellow": (235, 210, 40), "green": (50, 160, 60),
    "blue": (40, 80, 210), "purple": (140, 50, 170), "white": (240, 240, 240), "grey": (128, 128, 128),
    "black": (25, 25, 25), "brown": (120, 75, 35),
}
OBJECT_COLOURS = ["red", "orange", "yellow", "green", "blue", "purple"]
PREFERRED_COLOUR = {"circle": "red", "square": "blue", "triangle": "green", "star": "yellow",
                    "ring": "purple", "cross": "orange", "person": "blue"}
P_PREFERRED_COLOUR = 0.75
PERSON_SHARE = 0.35        # share of shape images with a person beside the object
MIX = 0.25                 # share of each synth-passnet source drawn from the other kind of image
CLOTHES = (235, 80, 170)   # synth-passnet people wear pink, a colour no shape or scene has
N_EDGE_CASES = 4           # scenes with a planted person (listed)
DUP_FRACTION = 0.03        # planted copies per source, as a share of its images
NOISE_SIGMA = 5.0

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
_SKIN = [(235, 195, 160), (200, 150, 110), (150, 100, 70), (95, 65, 45)]


# --------------------------------------------------------------------------- drawing


def _rot(cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates rotated by ``angle`` around (cx, cy)."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = _XX - cx, _YY - cy
    return c * dx + s * dy, -s * dx + c * dy


def _segment(x0: float, y0: float, x1: float, y1: float, width: float) -> np.ndarray:
    """Mask of a thick line segment (distance to the segment < width/2)."""
    vx, vy = x1 - x0, y1 - y0
    t = np.clip(((_XX - x0) * vx + (_YY - y0) * vy) / max(vx * vx + vy * vy, 1e-6), 0, 1)
    return (_XX - x0 - t * vx) ** 2 + (_YY - y0 - t * vy) ** 2 < (width / 2) ** 2


def _shape_mask(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    u, v = _rot(cx, cy, angle)
    if shape == "circle":
        return u * u + v * v < r * r
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 < r * r) & (d2 > (0.55 * r) ** 2)
    if shape == "square":
        return (np.abs(u) < 0.8 * r) & (np.abs(v) < 0.8 * r)
    if shape == "triangle":  # equilateral, inscribed in radius r
        out = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = angle + np.pi / 2 + 2 * np.pi * k / 3
            out &= (np.cos(a) * (_XX - cx) + np.sin(a) * (_YY - cy)) < 0.5 * r
        return out
    if shape == "star":
        theta = np.arctan2(v, u)
        return np.sqrt(u * u + v * v) < r * (0.62 + 0.38 * np.cos(5 * theta))
    if shape == "cross":
        w = 0.3 * r
        return ((np.abs(u) < w) & (np.abs(v) < r)) | ((np.abs(v) < w) & (np.abs(u) < r))
    raise ValueError(shape)


def _texture(texture: str, angle: float, period: float, rng: np.random.Generator) -> np.ndarray:
    """Binary pattern (True = full colour, False = darker shade) over the whole image."""
    if texture == "plain":
        return np.ones((SIZE, SIZE), dtype=bool)
    u, v = _rot(SIZE / 2 + rng.uniform(0, period), SIZE / 2, angle)
    if texture == "striped":
        return np.sin(2 * np.pi * u / period) > 0
    if texture == "dotted":
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        return du * du + dv * dv > (0.3 * period) ** 2
    if texture == "checkered":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    raise ValueError(texture)


def _paint(img: np.ndarray, mask: np.ndarray, rgb, pattern: np.ndarray | None = None) -> None:
    rgb = np.asarray(rgb, dtype=np.float32)
    if pattern is None:
        img[mask] = rgb
    else:
        img[mask & pattern] = rgb
        img[mask & ~pattern] = 0.55 * rgb


def _jitter(rng: np.random.Generator, colour, amount: float = 18) -> np.ndarray:
    """``colour`` (a name in ``RGB`` or an RGB triple) plus uniform noise per channel."""
    rgb = RGB[colour] if isinstance(colour, str) else colour
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _vertical_gradient(img: np.ndarray, top, bottom, y0: int = 0, y1: int = SIZE) -> None:
    t = np.linspace(0, 1, max(y1 - y0, 1), dtype=np.float32)[:, None, None]
    img[y0:y1] = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)


def _draw_person(img: np.ndarray, cx: float, top: float, h: float, rng: np.random.Generator,
                 shirt=None, pattern: np.ndarray | None = None, clothes=None) -> None:
    """A stick-and-block person figure: head, torso, arms, legs; ``h`` pixels tall.

    The shirt is ``shirt``, else ``clothes`` jittered, else a random object colour jittered.
    """
    skin = np.asarray(_SKIN[rng.integers(len(_SKIN))], np.float32)
    if shirt is None:
        shirt = _jitter(rng, OBJECT_COLOURS[rng.integers(6)] if clothes is None else clothes)
    trousers = _jitter(rng, ["black", "blue", "brown", "grey"][rng.integers(4)], 10)
    limb = max(0.07 * h, 1.6)
    hip, foot = top + 0.6 * h, top + h
    for side in (-1, 1):
        _paint(img, _segment(cx + side * 0.06 * h, hip, cx + side * 0.13 * h, foot - limb / 2, limb),
               trousers)
        _paint(img, _segment(cx + side * 0.13 * h, top + 0.28 * h,
                             cx + side * rng.uniform(0.2, 0.3) * h, top + rng.uniform(0.4, 0.58) * h, limb),
               skin)
    torso = (np.abs(_XX - cx) < 0.14 * h) & (_YY > top + 0.23 * h) & (_YY < hip)
    _paint(img, torso, shirt, pattern)
    head = (_XX - cx) ** 2 + (_YY - top - 0.12 * h) ** 2 < (0.12 * h) ** 2
    _paint(img, head, skin)


def _object_background(img: np.ndarray, rng: np.random.Generator) -> str:
    kind = ["wall", "gradient", "tabletop"][rng.integers(3)]
    wall = rng.uniform(165, 220) + rng.uniform(-12, 12, 3)
    if kind == "wall":
        img[:] = wall
    elif kind == "gradient":
        _vertical_gradient(img, wall, wall * rng.uniform(0.55, 0.8) + rng.uniform(-15, 15, 3))
    else:
        img[:] = wall
        edge = int(rng.uniform(0.6, 0.75) * SIZE)
        img[edge:] = np.asarray(RGB["brown"], np.float32) * rng.uniform(0.8, 1.3)
    return kind


def _render_object(cls: str, rng: np.random.Generator, with_person: bool,
                   clothes=None) -> tuple[np.ndarray, list[str]]:
    img = np.empty((SIZE, SIZE, 3), np.float32)
    concepts = ["background:" + _object_background(img, rng)]
    colour = PREFERRED_COLOUR[cls] if rng.random() < P_PREFERRED_COLOUR else OBJECT_COLOURS[rng.integers(6)]
    texture = CONCEPTS["texture"][rng.integers(4)]
    pattern = _texture(texture, rng.uniform(0, np.pi), rng.uniform(4, 8), rng)
    concepts += [f"colour:{colour}", f"texture:{texture}"]
    if cls == "person":
        h = rng.uniform(42, 56)
        _draw_person(img, SIZE / 2 + rng.uniform(-6, 6), rng.uniform(3, SIZE - h - 2), h, rng,
                     shirt=_jitter(rng, colour), pattern=pattern)
        return img, concepts + ["person:person"]
    side = rng.choice([-1, 1]) if with_person else 0
    cx = SIZE / 2 + rng.uniform(-5, 5) - side * 9
    cy = SIZE / 2 + rng.uniform(-5, 5)
    r = rng.uniform(14, 19) if with_person else rng.uniform(16, 23)
    _paint(img, _shape_mask(cls, cx, cy, r, rng.uniform(0, 2 * np.pi)), _jitter(rng, colour), pattern)
    concepts.append(f"object:{cls}")
    if with_person:
        h = rng.uniform(28, 38)
        _draw_person(img, SIZE / 2 + side * rng.uniform(17, 22), rng.uniform(SIZE - h - 8, SIZE - h - 1), h, rng,
                     clothes=clothes)
        concepts.append("person:person")
    return img, concepts


def _sky(img: np.ndarray, rng: np.random.Generator, horizon: int, night_ok: bool = False) -> list[str]:
    kind = rng.choice(["day", "sunset", "night"] if night_ok else ["day", "day", "sunset"])
    if kind == "day":
        _vertical_gradient(img, rng.uniform(-15, 15, 3) + (60, 110, 215), (175, 205, 240), 0, horizon)
        return ["background:sky", "colour:blue"]
    if kind == "sunset":
        _vertical_gradient(img, (240, 120, 50) + rng.uniform(-15, 15, 3), (250, 205, 120), 0, horizon)
        return ["background:sky", "colour:orange"]
    _vertical_gradient(img, (10, 12, 35), (45, 45, 85) + rng.uniform(-10, 10, 3), 0, horizon)
    return ["background:night-sky", "colour:black"]


def _sun_and_clouds(img: np.ndarray, rng: np.random.Generator, horizon: int, p_sun: float) -> list[str]:
    out = []
    if rng.random() < p_sun:
        cx, cy, r = rng.uniform(8, SIZE - 8), rng.uniform(6, max(horizon - 8, 8)), rng.uniform(4, 7)
        _paint(img, (_XX - cx) ** 2 + (_YY - cy) ** 2 < r * r, _jitter(rng, "yellow", 10))
        out += ["object:sun", "colour:yellow"]
    if rng.random() < 0.4:
        cx, cy = rng.uniform(5, SIZE - 5), rng.uniform(4, max(horizon / 2, 6))
        mask = np.zeros((SIZE, SIZE), bool)
        for dx in (-5, 0, 5):
            mask |= ((_XX - cx - dx) / 5) ** 2 + ((_YY - cy) / 3) ** 2 < 1
        _paint(img, mask, (235, 235, 240))
        out += ["object:cloud", "colour:white"]
    return out


def _render_scene(cls: str, rng: np.random.Generator) -> tuple[np.ndarray, list[str], int]:
    """A scene image, its concepts and the y of its ground (where a planted person stands)."""
    img = np.empty((SIZE, SIZE, 3), np.float32)
    if cls == "mountains":
        ground = int(rng.uniform(0.7, 0.85) * SIZE)
        c = _sky(img, rng, ground)
        c += _sun_and_clouds(img, rng, ground, 0.3)
        grass = rng.random() < 0.5
        img[ground:] = _jitter(rng, "green" if grass else "brown")
        c += ["object:mountain", "colour:grey", "background:rock"]
        c += ["background:grass", "colour:green"] if grass else ["colour:brown"]
        snow = rng.random() < 0.6
        for _ in range(rng.integers(1, 4)):
            px, height, half = rng.uniform(8, SIZE - 8), rng.uniform(0.3, 0.6) * SIZE, rng.uniform(12, 24)
            apex = ground - height
            body = (_YY > apex + np.abs(_XX - px) * height / half) & (_YY < ground)
            _paint(img, body, np.full(3, rng.uniform(95, 140)))
            if snow:
                _paint(img, body & (_YY < apex + 0.3 * height), (245, 245, 250))
        if snow:
            c += ["background:snow", "colour:white"]
        return img, c + ["texture:plain"], ground
    if cls == "sea":
        horizon = int(rng.uniform(0.35, 0.55) * SIZE)
        c = _sky(img, rng, horizon)
        c += _sun_and_clouds(img, rng, horizon, 0.5)
        _vertical_gradient(img, (30, 70, 150) + rng.uniform(-15, 15, 3), (20, 110, 180), horizon, SIZE)
        waves = np.sin(2 * np.pi * (_YY / rng.uniform(3, 6) + 0.15 * np.sin(_XX / rng.uniform(3, 6)))) > 0.6
        _paint(img, waves & (_YY > horizon + 1), (120, 170, 225))
        if rng.random() < 0.5:
            ix, iw, ih = rng.uniform(0, SIZE), rng.uniform(6, 18), rng.uniform(3, 9)
            island = (((_XX - ix) / iw) ** 2 + ((_YY - horizon) / ih) ** 2 < 1) & (_YY <= horizon + 1)
            _paint(img, island, _jitter(rng, "green", 15) * 0.7)
            c += ["object:island", "colour:green"]
        return img, c + ["object:wave", "background:water", "colour:blue", "texture:striped"], SIZE - 4
    if cls == "forest":
        treeline = int(rng.uniform(0.15, 0.35) * SIZE)
        c = _sky(img, rng, treeline)
        img[treeline:] = _jitter(rng, "green") * 0.75
        for _ in range(rng.integers(5, 11)):
            tx, base, h = rng.uniform(2, SIZE - 2), rng.uniform(treeline + 10, SIZE + 4), rng.uniform(16, 34)
            _paint(img, (np.abs(_XX - tx) < 1.8) & (_YY < base) & (_YY > base - h), _jitter(rng, "brown", 10))
            crown_cy, crown_r = base - h, rng.uniform(5, 9)
            if rng.random() < 0.5:
                crown = (_XX - tx) ** 2 + (_YY - crown_cy) ** 2 < crown_r ** 2
            else:
                crown = (_YY > crown_cy - 1.5 * crown_r + np.abs(_XX - tx) * 1.6) & (_YY < crown_cy + crown_r)
            _paint(img, crown, _jitter(rng, "green", 25) * rng.uniform(0.6, 1.0))
        return img, c + ["object:tree", "colour:green", "colour:brown", "background:grass",
                         "texture:plain"], SIZE - 3
    if cls == "city":
        c = _sky(img, rng, SIZE, night_ok=True)
        night = "background:night-sky" in c
        lit = rng.random((SIZE, SIZE)) < 0.6
        x = rng.uniform(-4, 0)
        while x < SIZE:
            w, h = rng.uniform(6, 13), rng.uniform(0.3, 0.8) * SIZE
            body = (_XX >= x) & (_XX < x + w) & (_YY > SIZE - h)
            _paint(img, body, np.full(3, rng.uniform(20, 60) if night else rng.uniform(80, 150)))
            windows = body & (np.mod(_XX - x, 3) > 1.5) & (np.mod(_YY, 4) > 2) & (_YY > SIZE - h + 2)
            _paint(img, windows & lit,
                   _jitter(rng, "yellow", 10) if night else (190, 210, 230))
            x += w + rng.uniform(0, 3)
        c += ["object:building", "colour:grey", "texture:dotted"] + (["colour:yellow"] if night else [])
        return img, c, SIZE - 2
    if cls == "desert":
        horizon = int(rng.uniform(0.3, 0.5) * SIZE)
        c = _sky(img, rng, horizon)
        c += _sun_and_clouds(img, rng, horizon, 0.7)
        img[horizon:] = _jitter(rng, "yellow", 15) * 0.9
        for k in range(rng.integers(1, 4)):
            y0 = horizon + (k + 0.5) * (SIZE - horizon) / 4
            edge = y0 + rng.uniform(2, 5) * np.sin(_XX / rng.uniform(5, 10) + rng.uniform(0, 6))
            _paint(img, _YY > edge, _jitter(rng, "orange", 15) * rng.uniform(0.8, 1.0))
        c += ["object:dune", "colour:yellow", "colour:orange", "background:sand"]
        if rng.random() < 0.5:
            ripple = (np.sin(2 * np.pi * (_YY + 0.3 * _XX) / rng.uniform(3, 5)) > 0.7) & (_YY > horizon)
            img[ripple] *= 0.85
            c.append("texture:striped")
        else:
            c.append("texture:plain")
        if rng.random() < 0.3:
            cx, base = rng.uniform(8, SIZE - 8), rng.uniform(horizon + 15, SIZE - 2)
            mask = (np.abs(_XX - cx) < 1.5) & (_YY < base) & (_YY > base - 16)
            for dx, y_arm in ((-5, base - 7), (4, base - 10)):
                mask |= _segment(cx + dx, y_arm - 5, cx + dx, y_arm, 2.5) | _segment(cx + dx, y_arm, cx, y_arm, 2.5)
            _paint(img, mask, _jitter(rng, "green", 10))
            c += ["object:cactus", "colour:green"]
        return img, c, SIZE - 3
    raise ValueError(cls)


# --------------------------------------------------------------------------- sources


def _finish(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-image brightness jitter plus pixel noise, then uint8."""
    images *= rng.uniform(0.9, 1.1, size=(len(images), 1, 1, 1)).astype(np.float32)
    noise = rng.standard_normal(images.shape, dtype=np.float32)
    noise *= NOISE_SIGMA
    images += noise
    np.clip(images, 0, 255, out=images)
    return np.rint(images, out=images).astype(np.uint8)


def _multi_hot(names: list[str]) -> np.ndarray:
    row = np.zeros(len(CONCEPT_NAMES), dtype=bool)
    row[[_CI[n] for n in names]] = True
    return row


def render_group(group: str, n: int, rng: np.random.Generator, *, n_edge: int = 0, people: bool = True,
                 clothes=None):
    """``n`` images of one kind (``group`` "objects" or "scenes") with balanced classes.

    ``people=False`` leaves people out of object images (no ``person`` class, nobody beside
    a shape), as in PASS. ``clothes``: the RGB of the shirts of people beside shapes and of
    planted people (default: a random object colour). Returns (images uint8 (n,H,W,3),
    global labels (n,), concepts bool (n,C), edge case rows).
    """
    if group == "objects":
        classes = OBJECT_CLASSES if people else [c for c in OBJECT_CLASSES if c != "person"]
    else:
        classes = SCENE_CLASSES
    local = rng.permutation(np.arange(n) % len(classes))
    images = np.empty((n, SIZE, SIZE, 3), np.float32)
    concepts = np.zeros((n, len(CONCEPT_NAMES)), dtype=bool)
    edge = set(rng.choice(n, size=min(n_edge, n), replace=False).tolist()) if group == "scenes" else set()
    for i, k in enumerate(local):
        cls = classes[k]
        if group == "objects":
            img, names = _render_object(cls, rng, with_person=people and cls != "person"
                                        and rng.random() < PERSON_SHARE, clothes=clothes)
        else:
            img, names, ground = _render_scene(cls, rng)
            if i in edge:  # planted: a small person standing on the ground
                h = rng.uniform(12, 18)
                _draw_person(img, rng.uniform(8, SIZE - 8), ground - h, h, rng, clothes=clothes)
                names.append("person:person")
        images[i] = img
        concepts[i] = _multi_hot(names)
    labels = np.asarray([CLASS_NAMES.index(classes[k]) for k in local], dtype=np.int64)
    return _finish(images, rng), labels, concepts, sorted(edge)


def _perturb(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A slightly changed copy: pixel noise, a 1 px shift (edge-padded) or brightness ±5–10 %."""
    x = img.astype(np.float32)
    if kind == "noise":
        x += rng.standard_normal(x.shape, dtype=np.float32) * 4.0
    elif kind == "shift":
        dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1)][rng.integers(6)]
        x = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")[1 - dy:1 - dy + SIZE, 1 - dx:1 - dx + SIZE]
    elif kind == "brightness":
        x *= rng.choice([-1, 1]) * rng.uniform(0.05, 0.1) + 1
    return np.clip(x, 0, 255).round().astype(np.uint8)


DUP_KINDS = ("exact", "noise", "shift", "brightness")


def plant_duplicates(images, labels, concepts, n_pairs: int, rng: np.random.Generator,
                     exclude=(), offset: int = 0):
    """Overwrite ``n_pairs`` rows with copies of other rows (in place); disjoint pairs.

    Returns pairs (P, 2) of row indices + ``offset``, smaller index first, and their kinds.
    """
    free = np.setdiff1d(np.arange(len(images)), np.asarray(list(exclude), dtype=np.int64))
    n_pairs = min(n_pairs, len(free) // 2)   # tiny sources: as many as fit
    chosen = rng.choice(free, size=2 * n_pairs, replace=False)
    pairs, kinds = [], []
    for k in range(n_pairs):
        src, dst = int(chosen[2 * k]), int(chosen[2 * k + 1])
        kind = DUP_KINDS[k % len(DUP_KINDS)]
        images[dst] = images[src] if kind == "exact" else _perturb(images[src], kind, rng)
        labels[dst], concepts[dst] = labels[src], concepts[src]
        pairs.append(sorted((src + offset, dst + offset)))
        kinds.append(kind)
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2), kinds


def _check_size(n: int, what: str) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise BenchError(f"{what} must be a positive integer, got {n!r}")


def _fresh(source: ImageSource) -> ImageSource:
    """A caller's own copy of a cached source (arrays shared read-only, notes copied)."""
    return dataclasses.replace(
        source, notes=copy.deepcopy(source.notes), ids=list(source.ids), class_names=list(source.class_names),
        concept_names=list(source.concept_names), group_names=list(source.group_names),
        concept_groups={k: list(v) for k, v in source.concept_groups.items()})


def _read_only(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


def make_synth_passnet(seed: int = 0, **kwargs) -> ImageSource:
    """``synth-passnet``: the ImageNet-like source then the PASS-like one, ``n_per_source`` images each.

    Generated once per process and parameters (≈1 s), then served from a small cache;
    the cached arrays are read-only so no caller can change another's data.
    """
    return _fresh(_synth_passnet(seed, **kwargs))


def _mixed_source(main: str, n: int, mix: float, rngs, *, people: bool, n_edge: int = 0):
    """One source: ``n − round(mix·n)`` images of kind ``main`` and the rest of the other kind,
    rows shuffled. Returns images, labels, concepts and the shuffled edge case rows."""
    other = "scenes" if main == "objects" else "objects"
    n_other = round(mix * n)
    # render_group plants the n_edge people in scenes only
    parts = {main: render_group(main, n - n_other, rngs[0], people=people, clothes=CLOTHES, n_edge=n_edge),
             other: render_group(other, n_other, rngs[1], people=people, clothes=CLOTHES, n_edge=n_edge)}
    img, lab, con = (np.concatenate([parts["objects"][i], parts["scenes"][i]]) for i in range(3))
    n_obj = len(parts["objects"][0])
    order = rngs[2].permutation(n)                      # row r of the source is image order[r]
    where = np.argsort(order)
    edge_rows = sorted(int(where[n_obj + e]) for e in parts["scenes"][3])
    return img[order], lab[order], con[order], edge_rows


@functools.lru_cache(maxsize=4)
def _synth_passnet(seed: int = 0, *, n_per_source: int = 600, dup_fraction: float = DUP_FRACTION,
                   n_edge_cases: int = N_EDGE_CASES, mix: float = MIX) -> ImageSource:
    _check_size(n_per_source, "n_per_source")
    if not 0 <= dup_fraction <= 0.25:
        raise BenchError(f"dup_fraction must be in [0, 0.25], got {dup_fraction}")
    if not 0 <= mix < 0.5:
        raise BenchError(f"mix must be in [0, 0.5), got {mix}")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([seed, 1]).spawn(7)]
    img_o, lab_o, con_o, _ = _mixed_source("objects", n_per_source, mix, streams[0:3], people=True)
    img_s, lab_s, con_s, edge = _mixed_source("scenes", n_per_source, mix, streams[3:6], people=False,
                                              n_edge=n_edge_cases)
    r_dup = streams[6]
    n_pairs = round(dup_fraction * n_per_source)
    pairs_o, kinds_o = plant_duplicates(img_o, lab_o, con_o, n_pairs, r_dup)
    pairs_s, kinds_s = plant_duplicates(img_s, lab_s, con_s, n_pairs, r_dup, exclude=edge,
                                        offset=n_per_source)
    images = np.concatenate([img_o, img_s])
    labels = np.concatenate([lab_o, lab_s])
    concepts = np.concatenate([con_o, con_s])
    is_scene = labels >= len(OBJECT_CLASSES)
    groups = np.repeat(np.arange(2, dtype=np.int64), n_per_source)
    pairs = np.concatenate([pairs_o, pairs_s])
    edge_rows = [n_per_source + e for e in edge]
    notes = {
        "edge_cases": [{"index": i, "group": "scenes", "class": CLASS_NAMES[labels[i]],
                        "concept": "person:person", "what": "a small person planted in a scene"}
                       for i in edge_rows],
        "planted": {"concept": "person:person", "group": "objects",
                    "what": "people occur in the ImageNet-like source only (and the listed edge cases)"},
        "is_scene": is_scene,
        "duplicate_kinds": kinds_o + kinds_s,
        "seed": seed, "n_per_source": n_per_source, "mix": mix,
    }
    _read_only(images, labels, concepts, groups, pairs, is_scene)
    return ImageSource(
        name="synth-passnet",
        revision=content_revision(images, labels, concepts, groups, pairs if len(pairs) else None,
                                  extra="synth-passnet/2"),   # content_revision cannot hash empty arrays
        n=len(images), array=images, ids=[f"{GROUP_NAMES[g]}/{i:05d}" for i, g in enumerate(groups)],
        labels=labels, class_names=list(CLASS_NAMES), concepts=concepts,
        concept_names=list(CONCEPT_NAMES), concept_groups={k: list(v) for k, v in CONCEPT_GROUPS.items()},
        groups=groups, group_names=list(GROUP_NAMES), duplicate_pairs=pairs, notes=notes,
    )


def make_synth_shift(seed: int = 0, **kwargs) -> ImageSource:
    """``synth-shift`` as one source (see :func:`_synth_shift`); cached like synth-passnet."""
    return _fresh(_synth_shift(seed, **kwargs))


@functools.lru_cache(maxsize=4)
def _synth_shift(seed: int = 0, *, n_per_level: int = 150, n_levels: int = 11,
                 n_reference: int | None = None) -> ImageSource:
    """``synth-shift``: the union of an objects-only reference and a ladder of mixes, all images disjoint.

    Level k mixes round(p_k·n) scenes into n images (p_k = k / (n_levels − 1)); the
    reference is a separate sample of objects only. In the union, group = level index,
    and the reference is the last group.
    """
    _check_size(n_per_level, "n_per_level")
    if not isinstance(n_levels, int) or n_levels < 2:
        raise BenchError(f"n_levels must be an integer >= 2, got {n_levels!r}")
    n_ref = n_per_level if n_reference is None else n_reference
    _check_size(n_ref, "n_reference")
    props = [k / (n_levels - 1) for k in range(n_levels)]
    n_b = [round(p * n_per_level) for p in props]
    r_obj, r_scn, r_mix = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, 2]).spawn(3))
    n_obj = n_ref + sum(n_per_level - b for b in n_b)
    img_o, lab_o, con_o, _ = render_group("objects", n_obj, r_obj)
    img_s, lab_s, con_s, _ = render_group("scenes", max(sum(n_b), 1), r_scn)
    levels, o, s = [], n_ref, 0
    for b in n_b:
        a = n_per_level - b
        rows = np.concatenate([np.arange(o, o + a), n_obj + np.arange(s, s + b)])
        levels.append(r_mix.permutation(rows))
        o, s = o + a, s + b
    images = np.concatenate([img_o, img_s])
    labels = np.concatenate([lab_o, lab_s])
    concepts = np.concatenate([con_o, con_s])
    is_scene = np.arange(len(images)) >= n_obj
    # union order: level 0, level 1, …, reference
    order = np.concatenate(levels + [np.arange(n_ref)])
    groups = np.concatenate([np.full(n_per_level, k, dtype=np.int64) for k in range(n_levels)]
                            + [np.full(n_ref, n_levels, dtype=np.int64)])
    images, labels, concepts, is_scene = images[order], labels[order], concepts[order], is_scene[order]
    actual = [b / n_per_level for b in n_b]
    group_names = [f"p={p:.2f}" for p in actual] + ["reference"]
    _read_only(images, labels, concepts, groups, is_scene)
    union = ImageSource(
        name="synth-shift",
        revision=content_revision(images, labels, concepts, groups, extra="synth-shift/1"),
        n=len(images), array=images, ids=[f"{group_names[g]}/{i:05d}" for i, g in enumerate(groups)],
        labels=labels, class_names=list(CLASS_NAMES), concepts=concepts,
        concept_names=list(CONCEPT_NAMES), concept_groups={k: list(v) for k, v in CONCEPT_GROUPS.items()},
        groups=groups, group_names=group_names, duplicate_pairs=np.zeros((0, 2), np.int64),
        notes={"proportions": actual, "is_scene": is_scene, "source_names": ["objects", "scenes"],
               "seed": seed, "n_per_level": n_per_level},
    )
    return union


def synth_shift_ladder(seed: int = 0, **kwargs) -> tuple[ImageSource, list[tuple[float, ImageSource]]]:
    """(reference objects sample, [(proportion of scenes, mixed sample)]) from ``synth-shift``."""
    union = make_synth_shift(seed, **kwargs)
    n_levels = len(union.group_names) - 1
    reference = union.subset(np.flatnonzero(union.groups == n_levels), name="synth-shift[reference]")
    ladder = []
    for k, p in enumerate(union.notes["proportions"]):
        sub = union.subset(np.flatnonzero(union.groups == k), name=f"synth-shift[p={p:.2f}]")
        sub.notes["is_scene"] = union.notes["is_scene"][union.groups == k]
        ladder.append((p, sub))
    reference.notes["is_scene"] = np.zeros(reference.n, dtype=bool)
    return reference, ladder


# --------------------------------------------------------------------------- synth-scale:N

SCALE_PREFIX = "synth-scale:"


def render_one(i: int, seed: int = 0) -> np.ndarray:
    """Image ``i`` of ``synth-scale``: class ``i mod 12`` (objects then scenes), rendered from
    ``(seed, i)`` alone, so any image can be made on demand, in any process, in any order."""
    rng = np.random.default_rng([seed, i])
    cls = CLASS_NAMES[i % len(CLASS_NAMES)]
    if cls in OBJECT_CLASSES:
        img, _ = _render_object(cls, rng, with_person=cls != "person" and rng.random() < PERSON_SHARE)
    else:
        img, _, _ = _render_scene(cls, rng)
    return _finish(img[None], rng)[0]


def make_synth_scale(n: int, seed: int = 0) -> ImageSource:
    """``synth-scale:N``: N images rendered lazily (nothing stored but the labels, 8 bytes each), for
    showing that extraction and the methods keep memory flat in the dataset size."""
    _check_size(n, "synth-scale:N")
    labels = (np.arange(n, dtype=np.int64) % len(CLASS_NAMES))
    groups = (labels >= len(OBJECT_CLASSES)).astype(np.int64)
    return ImageSource(name=f"{SCALE_PREFIX}{n}", revision=content_revision(extra=f"synth-scale|{n}|{seed}|v1"),
                       n=n, loader=functools.partial(render_one, seed=seed), labels=labels,
                       class_names=list(CLASS_NAMES), groups=groups, group_names=list(GROUP_NAMES),
                       notes={"lazy": True, "seed": seed})


def synth_scale_spec(text: str) -> DatasetSpec:
    """Spec for ``synth-scale:N`` (resolved by name, like ``imagefolder:``)."""
    raw = text[len(SCALE_PREFIX):]
    try:
        n = int(raw.replace("_", ""))
    except ValueError:
        n = 0
    if n < 1:
        raise BenchError(f"synth-scale:N needs a positive image count, e.g. synth-scale:200000; got {raw!r}")
    return DatasetSpec(name=text, description=f"{n} synthetic 64×64 images rendered on demand (memory test)",
                       load=lambda seed=0, **kw: make_synth_scale(n, seed), embedded=True)
