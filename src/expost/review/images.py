"""How much a figure changed, and a picture of it: before | after | the changed pixels.

Two scores, both on the greyscale images (the after image resized to the before's size when the
size changed):
- `ssim`: the mean structural similarity (SSIM, Wang et al. 2004) over 7x7-pixel windows, with the
  usual constants for a 0-1 range; 1 is identical, and a moved curve on a white plot typically
  scores 0.90-0.99 because most windows are background;
- `changed`: the share of pixels whose greyscale value, blurred over 3x3 pixels, differs by more
  than 10% of the range: how much of the figure's area changed visibly (anti-aliasing alone does
  not count).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WINDOW = 7  # SSIM window (pixels)
C1, C2 = 0.01 ** 2, 0.03 ** 2  # SSIM's constants for values in [0, 1]
VISIBLE = 0.10  # a blurred greyscale difference above this counts as a visible change
LABEL_H = 28  # pixels of the label strip above each panel


@dataclass
class Scored:
    ssim: float
    changed: float  # fraction of pixels
    size_before: tuple[int, int]
    size_after: tuple[int, int]

    @property
    def visible(self) -> bool:
        """Bytes aside, does it look different? (Re-encoding or sub-pixel shifts do not.)"""
        return self.changed > 0 or self.size_before != self.size_after


def _box(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over every k x k window that fits (an integral image: no scipy needed)."""
    s = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]) / (k * k)


def _grey(img) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float64) / 255.0


def _open(data: bytes):
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode == "RGB":
        return img
    rgba = img.convert("RGBA")  # transparent parts shown on white, as a page shows them
    return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")


def _pair(before: bytes, after: bytes):
    from PIL import Image

    a, b = _open(before), _open(after)
    b_fit = b if b.size == a.size else b.resize(a.size, Image.LANCZOS)
    return a, b, b_fit


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM of two greyscale arrays in [0, 1] of one shape, over WINDOW x WINDOW windows."""
    k = min(WINDOW, *x.shape)
    mx, my = _box(x, k), _box(y, k)
    vx = _box(x * x, k) - mx * mx
    vy = _box(y * y, k) - my * my
    cxy = _box(x * y, k) - mx * my
    s = ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))
    return float(s.mean())


def _changed_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = np.abs(x - y)
    blurred = np.pad(_box(d, 3), 1, mode="edge") if min(d.shape) >= 3 else d
    return blurred > VISIBLE


def score(before: bytes, after: bytes) -> Scored:
    a, b, b_fit = _pair(before, after)
    x, y = _grey(a), _grey(b_fit)
    return Scored(ssim(x, y), float(_changed_mask(x, y).mean()), a.size, b.size)


def side_by_side(before: bytes, after: bytes, out: Path, labels: tuple[str, str]) -> Path:
    """Write before | after | changed pixels (red over a faded after image) to `out` as a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    a, b, b_fit = _pair(before, after)
    mask = _changed_mask(_grey(a), _grey(b_fit))
    faded = np.asarray(b_fit, dtype=np.float64) * 0.25 + 255 * 0.75
    faded[mask] = (220, 30, 30)
    diff = Image.fromarray(faded.astype(np.uint8), "RGB")
    panels = [(a, labels[0]), (b, labels[1]), (diff, f"changed pixels ({mask.mean():.1%} of the area)")]
    width = sum(p.width for p, _ in panels) + 2 * 10
    height = max(p.height for p, _ in panels) + LABEL_H
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=16)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    x = 0
    for img, label in panels:
        sheet.paste(img, (x, LABEL_H))
        draw.text((x + 6, 5), label, fill="black", font=font)
        x += img.width + 10
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out
