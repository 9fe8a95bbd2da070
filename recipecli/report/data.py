"""What `recipe data` prints: the table, the JSON, the masked examples, and the one line `recipe
run` prints before training. Plain functions of a ``train.datastats.DataStats``; nothing here
tokenizes or imports torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..errors import Location, format_error

if TYPE_CHECKING:  # the type only: report never imports train at run time
    from ..train.datastats import DataStats, DataWarning, Part

TRAINED_COLOUR, RESET = "\x1b[1;32m", "\x1b[0m"  # bold green: the tokens that carry the loss
OPEN, CLOSE = "[[", "]]"  # the same without colour


def summary_line(stats: DataStats) -> str:
    """One line for `recipe run` to print before training."""
    mix = stats.mix
    share = mix.truncated / mix.records if mix.records else 0.0
    trained = mix.trained_tokens / mix.kept_tokens if mix.kept_tokens else 0.0
    return (f"data: {mix.records:,} records ({stats.train_records:,} train, {stats.eval_records:,} eval), "
            f"{mix.tokens:,} tokens, {mix.truncated:,} truncated ({share:.1%}), {trained:.0%} of tokens trained, "
            f"{stats.steps_per_epoch:,} steps per epoch")


def warning_text(warning: DataWarning) -> str:
    """A warning in the one error format: ``where: $.path: warning: message`` and its hint."""
    return format_error(warning.where, warning.path, warning.message, warning.hint)


def data_text(stats: DataStats, colour: bool = False) -> str:
    """The report for people: per dataset and the mix, batches and steps, fingerprints, warnings,
    and the examples with their trained tokens highlighted (colour, or [[...]] markers)."""
    packing = "on" if stats.packing else "off"
    lines = [f"{stats.recipe}: max_seq_length {stats.max_seq_length}, packing {packing}, "
             f"micro-batch {stats.micro_batch_size} x accumulation {stats.accumulation}", ""]
    parts = stats.datasets + ([stats.mix] if len(stats.datasets) > 1 else [])
    rows = [("dataset", "format", "records", "tokens", "min", "median", "p95", "p99", "max", "truncated",
             "lost", "dropped", "trained tokens", "dupes")] + [_row(p) for p in parts]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines += _batches(stats)
    lines.append("fingerprints (as run.yaml records them):")
    lines += [f"  {p.name}  {p.fingerprint}" for p in stats.datasets]
    for reason, count in stats.mix.dropped.items():
        lines.append(f"dropped: {count:,} records: {reason}")
    if stats.warnings:
        lines.append("")
        lines += [warning_text(w) for w in stats.warnings]
    for n, (where, segments) in enumerate(stats.previews, 1):
        legend = "trained tokens in colour" if colour else f"trained tokens between {OPEN} {CLOSE}"
        lines += ["", f"example {n} ({where}; {legend}):", masked(segments, colour)]
    return "\n".join(lines)


def _row(part: Part) -> tuple:
    lengths = part.lengths
    share = f" ({part.trained_tokens / part.kept_tokens:.0%})" if part.kept_tokens else ""
    cut = f" ({part.truncated / part.records:.0%})" if part.records and part.truncated else ""
    return (part.name, part.format, f"{part.records:,}", f"{part.tokens:,}",
            *(f"{lengths.get(k, 0):,}" for k in ("min", "median", "p95", "p99", "max")),
            f"{part.truncated:,}{cut}", f"{part.lost_tokens:,}", f"{sum(part.dropped.values()):,}",
            f"{part.trained_tokens:,} of {part.kept_tokens:,}{share}", f"{part.duplicates:,}")


def _batches(stats: DataStats) -> list[str]:
    per_step = stats.micro_batch_size * stats.accumulation
    unit = "packed sequences" if stats.packing else "records"
    lines = [f"train {stats.train_records:,} records, validation {stats.eval_records:,}; "
             f"{stats.sequences:,} {unit} per epoch, {per_step} per step: {stats.steps_per_epoch:,} steps per epoch"]
    if stats.max_steps is not None:
        lines[-1] += f"; max_steps {stats.max_steps:,} = {stats.max_steps / stats.steps_per_epoch:.1f} epochs"
    elif stats.epochs is not None:
        lines[-1] += f"; {stats.epochs:g} epochs = {round(stats.epochs * stats.steps_per_epoch):,} steps"
    if stats.packing:
        lines.append(f"packing: {stats.fill_ratio:.0%} of the packed tokens are data; "
                     f"{stats.padding_avoided:,} pad tokens avoided per epoch (vs micro-batch {stats.micro_batch_size})")
    elif stats.padding_share is not None:
        lines.append(f"padding: {stats.padding_share:.0%} of the tokens in a micro-batch of {stats.micro_batch_size} "
                     "are padding (mean over random orders; packing: true avoids it)")
    return lines


def masked(segments: list[tuple[str, bool]], colour: bool) -> str:
    """An example's text with the trained runs highlighted; control characters the data holds are
    shown escaped (\\x1b), so a record cannot clear the terminal or fake the highlighting."""
    before, after = (TRAINED_COLOUR, RESET) if colour else (OPEN, CLOSE)
    return "".join(f"{before}{_visible(text)}{after}" if trained else _visible(text) for text, trained in segments)


def _visible(text: str) -> str:
    return "".join(c if c in "\n\t" or (c.isprintable() and c not in "\x1b\x9b") else f"\\x{ord(c):02x}"
                   if ord(c) < 0x100 else f"\\u{ord(c):04x}" for c in text)


def data_json(stats: DataStats) -> dict:
    """For tools: every number, each warning located like a problem, the examples as segments."""
    def part(p: Part) -> dict:
        return {"name": p.name, "format": p.format, "fingerprint": p.fingerprint, "records": p.records,
                "tokens": p.tokens, "lengths": p.lengths, "truncated": p.truncated, "lost_tokens": p.lost_tokens,
                "dropped": p.dropped, "kept_tokens": p.kept_tokens, "trained_tokens": p.trained_tokens,
                "duplicates": p.duplicates}

    return {"recipe": stats.recipe, "max_seq_length": stats.max_seq_length, "packing": stats.packing,
            "micro_batch_size": stats.micro_batch_size, "gradient_accumulation_steps": stats.accumulation,
            "datasets": [part(p) for p in stats.datasets], "mix": part(stats.mix),
            "train_records": stats.train_records, "eval_records": stats.eval_records,
            "sequences_per_epoch": stats.sequences, "steps_per_epoch": stats.steps_per_epoch,
            "padding_share": stats.padding_share, "fill_ratio": stats.fill_ratio,
            "padding_avoided": stats.padding_avoided,
            "warnings": [_warning_json(w) for w in stats.warnings],
            "examples": [{"where": where, "segments": [{"text": t, "trained": trained} for t, trained in segments]}
                         for where, segments in stats.previews]}


def _warning_json(warning: DataWarning) -> dict:
    where: Optional[object] = warning.where
    located = isinstance(where, Location)
    return {"file": where.file if located else (str(where) if where else None),
            "line": where.line if located else None, "column": where.column if located else None,
            "path": warning.path, "message": warning.message, "hint": warning.hint}
