"""loss.png: the loss curve of a run, drawn and PNG-encoded in pure Python (zlib and struct).

Why not matplotlib: importing it costs 0.5-0.8 s, which every `recipe run` paid on its critical
path (about 5 % of the 15-second demo, more than all of recipecli's other fixed cost). Drawing in
a separate process after the adapter is saved would not help: `recipe run` promises loss.png when
it returns, so it would wait for that process, import included. A line chart is little to draw:
a palette canvas of 640x400 bytes, Bresenham lines, "nice" ticks and a built-in 5x7 bitmap font
for the tick labels and titles; it is drawn and compressed in a few tens of milliseconds.

The picture: train loss (blue) and eval loss (orange) against the optimizer step, grid lines at
round numbers, labelled axes and a legend; points are marked while there are fewer than 50.
Non-finite losses (a diverged run logs nan) are left out.
"""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Sequence

from . import atomic

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 96, 620, 32, 348  # the plot area, in pixels
SCALE = 2  # font pixels per glyph pixel: 10x14 characters

# Palette indices and their colours: white, text, axes, grid, train (blue), eval (orange).
WHITE, INK, AXES, GRID, TRAIN, EVAL = range(6)
PALETTE = [(255, 255, 255), (32, 32, 32), (110, 110, 110), (226, 226, 226), (31, 119, 180), (255, 127, 14)]

# 5x7 glyphs: seven rows of five bits, the high bit leftmost (the HD44780 character set). A
# character it lacks is drawn as a space.
_FONT = {char: bytes.fromhex(rows) for char, rows in {
    "0": "0e11131519110e", "1": "040c040404040e", "2": "0e11010204081f", "3": "1f02040201110e",
    "4": "02060a121f0202", "5": "1f101e0101110e", "6": "0608101e11110e", "7": "1f010204080808",
    "8": "0e11110e11110e", "9": "0e11110f01020c", ".": "00000000000c0c", "-": "0000001f000000",
    "+": "0004041f040400", "a": "00000e010f110f", "b": "1010161911111e", "c": "00000e1010110e",
    "d": "01010d1311110f", "e": "00000e111f100e", "f": "0609081c080808", "g": "000f11110f010e",
    "h": "10101619111111", "i": "04000c0404040e", "j": "0200060202120c", "k": "10101214181412",
    "l": "0c04040404040e", "m": "00001a15151111", "n": "00001619111111", "o": "00000e1111110e",
    "p": "00001e111e1010", "q": "00000d130f0101", "r": "00001619101010", "s": "00000e100e011e",
    "t": "08081c08080906", "u": "0000111111130d", "v": "00001111110a04", "w": "0000111115150a",
    "x": "0000110a040a11", "y": "000011110f010e", "z": "00001f0204081f",
}.items()}


def write(path: Path, train: Sequence[tuple[float, float]], evals: Sequence[tuple[float, float]] = ()) -> bool:
    """Draw the loss curves into a PNG file.

    Args:
        path: the file to write.
        train: (step, loss) of the training losses, in step order.
        evals: (step, loss) of the evaluation losses.

    Returns:
        False, writing nothing, when no loss is a finite number; else True.
    """
    curves = [([p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])], colour, label)
              for points, colour, label in ((train, TRAIN, "train loss"), (evals, EVAL, "eval loss"))]
    curves = [c for c in curves if c[0]]
    if not curves:
        return False
    atomic.write(path, _png(_draw(curves), WIDTH, HEIGHT))
    return True


def _draw(curves: list) -> bytearray:
    canvas = bytearray(WIDTH * HEIGHT)  # all WHITE
    xs = [x for points, _, _ in curves for x, _ in points]
    ys = [y for points, _, _ in curves for _, y in points]
    x_ticks, (x_lo, x_hi) = _ticks(min(xs), max(xs), integer=True)
    y_ticks, (y_lo, y_hi) = _ticks(min(ys), max(ys))

    def to_px(x: float, y: float) -> tuple[int, int]:
        return (round(LEFT + (x - x_lo) / (x_hi - x_lo) * (RIGHT - LEFT)),
                round(BOTTOM - (y - y_lo) / (y_hi - y_lo) * (BOTTOM - TOP)))

    for tick, label in x_ticks:
        px = to_px(tick, y_lo)[0]
        _rect(canvas, px, TOP, px, BOTTOM, GRID)
        _rect(canvas, px, BOTTOM, px, BOTTOM + 4, AXES)
        _text(canvas, label, px - _width(label) // 2, BOTTOM + 8)
    for tick, label in y_ticks:
        py = to_px(x_lo, tick)[1]
        _rect(canvas, LEFT, py, RIGHT, py, GRID)
        _rect(canvas, LEFT - 4, py, LEFT, py, AXES)
        _text(canvas, label, LEFT - 8 - _width(label), py - 7 * SCALE // 2)
    for x0, y0, x1, y1 in ((LEFT, TOP, RIGHT, TOP), (LEFT, BOTTOM, RIGHT, BOTTOM),
                           (LEFT, TOP, LEFT, BOTTOM), (RIGHT, TOP, RIGHT, BOTTOM)):
        _rect(canvas, x0, y0, x1, y1, AXES)
    _text(canvas, "optimizer step", (LEFT + RIGHT - _width("optimizer step")) // 2, HEIGHT - 7 * SCALE - 8)
    _text(canvas, "loss", 8, 4)

    for points, colour, _ in curves:
        pixels = [to_px(x, y) for x, y in points]
        for (x0, y0), (x1, y1) in zip(pixels, pixels[1:]):
            _line(canvas, x0, y0, x1, y1, colour)
        if len(pixels) < 50 or len(pixels) == 1:
            for x, y in pixels:
                _rect(canvas, x - 2, y - 2, x + 2, y + 2, colour)

    # The legend: a line of each colour and its label, in the corner the curves cross least.
    labels = [(colour, label) for _, colour, label in curves]
    box_w, box_h = 36 + max(_width(label) for _, label in labels), 8 + 20 * len(labels)
    corners = [(RIGHT - 8 - box_w, TOP + 8), (RIGHT - 8 - box_w, BOTTOM - 8 - box_h),
               (LEFT + 8, BOTTOM - 8 - box_h), (LEFT + 8, TOP + 8)]
    box_x, box_y = min(corners, key=lambda corner: _curve_pixels(canvas, *corner, box_w, box_h))
    _rect(canvas, box_x, box_y, box_x + box_w, box_y + box_h, WHITE)
    for i, (colour, label) in enumerate(labels):
        y = box_y + 6 + 20 * i
        _rect(canvas, box_x + 6, y + 6, box_x + 26, y + 7, colour)
        _text(canvas, label, box_x + 32, y)
    return canvas


def _curve_pixels(canvas: bytearray, x: int, y: int, width: int, height: int) -> int:
    return sum(sum(1 for c in canvas[row * WIDTH + x:row * WIDTH + x + width] if c >= TRAIN)
               for row in range(y, y + height))


def _ticks(lo: float, hi: float, integer: bool = False) -> tuple[list[tuple[float, str]], tuple[float, float]]:
    """Four to eight ticks at round numbers (1, 2 or 5 times a power of ten) and the axis range."""
    if hi - lo < (1 if integer else 1e-9 * max(1.0, abs(hi))):  # one point, or a flat line
        half = 1 if integer else max(abs(hi) * 0.1, 0.5)
        lo, hi = lo - half, hi + half
    # Some air around the curves, so that no point lies on the frame.
    lo, hi = lo - (hi - lo) * 0.04, hi + (hi - lo) * 0.04
    raw = (hi - lo) / 7
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, round(step))
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if not integer else 0
    first = math.ceil(lo / step - 1e-9)
    ticks = [(k * step, _label(k * step, decimals)) for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return ticks, (lo, hi)


def _label(value: float, decimals: int) -> str:
    """A tick label of at most 7 characters, the room left of the plot: 0.5, 12, 0.00025, 1.25e-6."""
    text = f"{value:.{decimals}f}"
    if len(text) > 7:
        mantissa, exponent = f"{value:.2e}".split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _rect(canvas: bytearray, x0: int, y0: int, x1: int, y1: int, colour: int) -> None:
    """Fill the rectangle with corners (x0, y0) and (x1, y1), both included, clipped to the image."""
    x0, x1 = max(0, min(x0, x1)), min(WIDTH - 1, max(x0, x1))
    if x0 > x1:
        return
    row = bytes([colour]) * (x1 - x0 + 1)
    for y in range(max(0, min(y0, y1)), min(HEIGHT - 1, max(y0, y1)) + 1):
        canvas[y * WIDTH + x0:y * WIDTH + x1 + 1] = row


def _line(canvas: bytearray, x0: int, y0: int, x1: int, y1: int, colour: int) -> None:
    """Bresenham's line, two pixels thick."""
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    error = dx + dy
    while True:
        _rect(canvas, x0, y0, x0 + 1, y0 + 1, colour)
        if x0 == x1 and y0 == y1:
            return
        twice = 2 * error
        if twice >= dy:
            error, x0 = error + dy, x0 + sx
        if twice <= dx:
            error, y0 = error + dx, y0 + sy


def _width(text: str) -> int:
    return len(text) * 6 * SCALE - SCALE


def _text(canvas: bytearray, text: str, x: int, y: int) -> None:
    """Draw text with its top left corner at (x, y)."""
    for i, char in enumerate(text):
        for row, bits in enumerate(_FONT.get(char, bytes(7))):
            for col in range(5):
                if bits & (0x10 >> col):
                    left, top = x + (6 * i + col) * SCALE, y + row * SCALE
                    _rect(canvas, left, top, left + SCALE - 1, top + SCALE - 1, INK)


def _png(canvas: bytearray, width: int, height: int) -> bytes:
    """An 8-bit palette PNG: signature, IHDR, PLTE, IDAT (each row after filter byte 0), IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + canvas[y * width:(y + 1) * width] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", bytes(c for rgb in PALETTE for c in rgb)) + chunk(b"IDAT", zlib.compress(rows, 6))
            + chunk(b"IEND", b""))
