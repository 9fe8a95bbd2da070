"""loss.png, drawn without matplotlib: a valid PNG of the right size that real decoders read, with
the curves where the losses say."""
from __future__ import annotations

import math
import struct
import subprocess
import sys
import zlib

import pytest

from recipecli.train import lossplot, runfolder

DESCENDING = [(step, 6.5 * 0.98 ** step) for step in range(10, 201, 10)]
BLUE, ORANGE = lossplot.PALETTE[lossplot.TRAIN], lossplot.PALETTE[lossplot.EVAL]


def decode(data: bytes) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    """An independent reading of the PNG, by the specification: chunks and their CRCs, the
    header, the palette and the zlib stream of filtered rows (filter 0 only, which lossplot writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"PLTE" in kinds
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour_type, interlace) == (8, 3, 0)
    plte = dict(chunks)[b"PLTE"]
    palette = [tuple(plte[i:i + 3]) for i in range(0, len(plte), 3)]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (width + 1)
    rows = []
    for y in range(height):
        line = raw[y * (width + 1):(y + 1) * (width + 1)]
        assert line[0] == 0
        rows.append([palette[i] for i in line[1:]])
    return width, height, rows


def pixels_of(rows, colour, x_range=None) -> list[tuple[int, int]]:
    lo, hi = x_range or (0, len(rows[0]))
    return [(x, y) for y, row in enumerate(rows) for x in range(lo, hi) if row[x] == colour]


def test_the_png_is_valid_and_of_the_size_drawn(tmp_path):
    out = tmp_path / "loss.png"
    assert lossplot.write(out, DESCENDING, [(100, 3.0), (200, 2.5)])
    width, height, rows = decode(out.read_bytes())
    assert (width, height) == (lossplot.WIDTH, lossplot.HEIGHT) == (640, 400)


def test_a_real_decoder_reads_it(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    out = tmp_path / "loss.png"
    lossplot.write(out, DESCENDING, [(100, 3.0)])
    with image_module.open(out) as image:
        image.load()
        assert image.size == (640, 400) and image.format == "PNG"
        colours = {rgb for _, rgb in image.convert("RGB").getcolors(1 << 16)}
    assert {BLUE, ORANGE, (255, 255, 255)} <= colours


def test_the_curve_follows_the_losses(tmp_path):
    out = tmp_path / "loss.png"
    lossplot.write(out, DESCENDING, [(100, DESCENDING[9][1]), (200, DESCENDING[-1][1])])
    _, _, rows = decode(out.read_bytes())
    quarter = (lossplot.RIGHT - lossplot.LEFT) // 4
    left = pixels_of(rows, BLUE, (lossplot.LEFT, lossplot.LEFT + quarter))
    right = pixels_of(rows, BLUE, (lossplot.RIGHT - quarter, lossplot.RIGHT))
    assert left and right
    # A falling loss: the curve is high (small y) on the left, low on the right, inside the frame.
    assert min(y for _, y in left) < min(y for _, y in right) - 100
    assert all(lossplot.TOP <= y <= lossplot.BOTTOM for _, y in left + right)
    # The blue curve spans the steps: some pixel in every tenth of the plot width.
    tenth = (lossplot.RIGHT - lossplot.LEFT) // 10
    xs = {x for x, y in pixels_of(rows, BLUE) if y > lossplot.TOP + 70}  # below the legend
    assert all(any(lossplot.LEFT + i * tenth <= x < lossplot.LEFT + (i + 1) * tenth for x in xs) for i in range(10))
    assert pixels_of(rows, ORANGE, (lossplot.RIGHT - quarter, lossplot.RIGHT))
    ink = lossplot.PALETTE[lossplot.INK]
    assert pixels_of(rows[lossplot.BOTTOM + 8:], ink), "tick labels and the axis title are drawn"


def test_non_finite_losses_are_left_out_and_nothing_is_drawn_without_any(tmp_path):
    out = tmp_path / "loss.png"
    assert lossplot.write(out, [(1, 2.0), (2, math.nan), (3, math.inf), (4, 1.5)])
    decode(out.read_bytes())
    assert not lossplot.write(tmp_path / "none.png", [(1, math.nan)], [(1, math.inf)])
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize("lo, hi, integer, labels", [
    (0.93, 6.7, False, ["1", "2", "3", "4", "5", "6"]),
    (10, 200, True, ["50", "100", "150", "200"]),
    (3, 3, True, ["2", "3", "4"]),  # one point still gets an axis
    (2.5, 2.5, False, ["2.0", "2.2", "2.4", "2.6", "2.8", "3.0"]),
    (1.0, 1.001, False, ["1.0000", "1.0002", "1.0004", "1.0006", "1.0008", "1.0010"]),
    (1, 10000, True, ["0", "2000", "4000", "6000", "8000", "10000"]),
    (1e-6, 3e-6, False, ["1.00e-6", "1.50e-6", "2.00e-6", "2.50e-6", "3.00e-6"]),
])
def test_ticks_are_round_numbers_that_fit_left_of_the_plot(lo, hi, integer, labels):
    ticks, (axis_lo, axis_hi) = lossplot._ticks(lo, hi, integer)
    assert [label for _, label in ticks] == labels
    assert axis_lo < lo and hi < axis_hi and all(len(label) <= 7 for label in labels)


def test_the_run_folder_plot_needs_no_matplotlib(tmp_path):
    """matplotlib's import cost every run ~0.6 s; a fresh process shows it stays out."""
    code = ("import sys; from pathlib import Path; from recipecli.train import runfolder; "
            f"out = runfolder.plot_loss(Path({str(tmp_path)!r}), [{{'step': 1, 'loss': 2.0}}, "
            "{'step': 2, 'loss': 1.0, 'eval_loss': 1.5}, {'step': 2, 'train_runtime': 1.0}]); "
            "assert out is not None and out.is_file(); assert 'matplotlib' not in sys.modules, 'matplotlib'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / runfolder.LOSS_PLOT).read_bytes().startswith(b"\x89PNG")
