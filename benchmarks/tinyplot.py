"""Tiny PNG charts with numpy and zlib only, so the simulator needs no plotting library.

Two chart kinds are enough for ringsim: a histogram and a line chart.  Axis ends are
labelled with a 3x5 pixel font (digits and a few symbols); titles and units are in the
file name and the report, not in the picture.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_FONT = {  # 3x5 glyphs, rows top to bottom, 3 bits each
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1),
    "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7), ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0),
    "e": (0, 7, 7, 4, 7), "+": (0, 2, 7, 2, 0), " ": (0, 0, 0, 0, 0), "%": (5, 1, 2, 4, 5),
}
COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an HxWx3 uint8 image (8-bit RGB, no interlace)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("need an HxWx3 uint8 array")
    height, width = rgb.shape[:2]
    raw = np.zeros((height, width * 3 + 1), dtype=np.uint8)   # filter byte 0 per row
    raw[:, 1:] = rgb.reshape(height, width * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


def _text(img: np.ndarray, x: int, y: int, text: str, scale: int = 2) -> None:
    for i, ch in enumerate(text):
        glyph = _FONT.get(ch, _FONT[" "])
        for row, bits in enumerate(glyph):
            for col in range(3):
                if bits & (4 >> col):
                    y0, x0 = y + row * scale, x + (i * 4 + col) * scale
                    img[y0:y0 + scale, x0:x0 + scale] = 0


def _label(value: float) -> str:
    return f"{value:.3g}"


class _Canvas:
    def __init__(self, width: int, height: int, margin: int = 40) -> None:
        self.img = np.full((height, width, 3), 255, dtype=np.uint8)
        self.w, self.h, self.m = width, height, margin

    def frame(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        m, w, h = self.m, self.w, self.h
        self.img[h - m, m:w - m // 2] = 0
        self.img[m // 2:h - m + 1, m] = 0
        _text(self.img, m, h - m + 8, _label(x_range[0]))
        lab = _label(x_range[1])
        _text(self.img, w - m // 2 - len(lab) * 8, h - m + 8, lab)
        _text(self.img, 2, h - m - 10, _label(y_range[0]))
        _text(self.img, 2, m // 2, _label(y_range[1]))

    def xy(self, x: np.ndarray, y: np.ndarray, xr, yr) -> tuple[np.ndarray, np.ndarray]:
        m, w, h = self.m, self.w, self.h
        span_x = (xr[1] - xr[0]) or 1.0
        span_y = (yr[1] - yr[0]) or 1.0
        px = m + (np.asarray(x, float) - xr[0]) / span_x * (w - 1.5 * m)
        py = (h - m) - (np.asarray(y, float) - yr[0]) / span_y * (h - 1.5 * m)
        return px.round().astype(int), py.round().astype(int)


def histogram_png(path: str | Path, values: Sequence[float], bins: int = 60,
                  width: int = 640, height: int = 360) -> None:
    """A histogram of ``values`` written to ``path``."""
    values = np.asarray(values, dtype=float)
    counts, edges = np.histogram(values, bins=bins)
    canvas = _Canvas(width, height)
    xr = (float(edges[0]), float(edges[-1]))
    yr = (0.0, float(max(counts.max(), 1)))
    canvas.frame(xr, yr)
    x0, _ = canvas.xy(edges[:-1], counts, xr, yr)
    x1, top = canvas.xy(edges[1:], counts, xr, yr)
    base = height - canvas.m
    for a, b, t in zip(x0, x1, top, strict=True):
        canvas.img[t:base, a:max(a + 1, b - 1)] = COLORS[0]
    Path(path).write_bytes(encode_png(canvas.img))


def lines_png(path: str | Path, x: Sequence[float], series: Sequence[Sequence[float]],
              width: int = 640, height: int = 360) -> None:
    """Line chart of several series over the same ``x``, written to ``path``."""
    x = np.asarray(x, dtype=float)
    ys = [np.asarray(s, dtype=float) for s in series]
    canvas = _Canvas(width, height)
    xr = (float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1)
    top = max(float(max(s.max() for s in ys)), 1.0)
    yr = (0.0, top)
    canvas.frame(xr, yr)
    for index, y in enumerate(ys):
        px, py = canvas.xy(x, y, xr, yr)
        color = COLORS[index % len(COLORS)]
        for i in range(len(px) - 1):
            steps = max(abs(px[i + 1] - px[i]), abs(py[i + 1] - py[i]), 1)
            xs = np.linspace(px[i], px[i + 1], steps + 1).round().astype(int)
            yv = np.linspace(py[i], py[i + 1], steps + 1).round().astype(int)
            canvas.img[np.clip(yv, 0, height - 1), np.clip(xs, 0, width - 1)] = color
            canvas.img[np.clip(yv + 1, 0, height - 1), np.clip(xs, 0, width - 1)] = color
    Path(path).write_bytes(encode_png(canvas.img))
