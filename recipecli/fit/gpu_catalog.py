"""GPUs as data: the ``Gpu`` type, a catalog of common cards by forgiving name, or a bare VRAM size.

Everything that judges a recipe receives a ``Gpu`` and never asks CUDA, so fit-checks for a card
you do not own (``--gpu rtx2080``) and tests are plain arithmetic. The cards of this machine come
from hardware.py, the only module that talks to the driver.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Optional

from ..errors import UsageError
from ..units import GIB, MIB

# Compute capability 8.0 (Ampere) brought bf16 tensor cores; flash-attn 2 needs them too.
BF16_MIN_CAPABILITY = (8, 0)
FLASH_ATTENTION_2_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Gpu:
    """One GPU, detected or described.

    ``compute_capability`` is None only for a card known by its VRAM alone (``--vram``): then
    nothing is claimed about bf16 or FlashAttention 2 support.
    """

    name: str
    total_bytes: int
    free_bytes: Optional[int]  # None when not measured (catalog cards, --vram)
    compute_capability: Optional[tuple[int, int]]
    driver: Optional[str] = None
    index: Optional[int] = None  # NVML index of a detected GPU

    @property
    def capability_text(self) -> str:
        cc = self.compute_capability
        return "unknown" if cc is None else f"{cc[0]}.{cc[1]}"

    @property
    def supports_bf16(self) -> Optional[bool]:
        cc = self.compute_capability
        return None if cc is None else cc >= BF16_MIN_CAPABILITY

    @property
    def supports_flash_attention_2(self) -> Optional[bool]:
        cc = self.compute_capability
        return None if cc is None else cc >= FLASH_ATTENTION_2_MIN_CAPABILITY


def _catalog_card(name: str, mib: int, capability: tuple[int, int]) -> Gpu:
    return Gpu(name=name, total_bytes=mib * MIB, free_bytes=None, compute_capability=capability)


# Memory is the total the driver reports (nvidia-smi), which for data-centre cards is below the
# marketed size (ECC and firmware reservations): a fit-check against a T4 should use 15 GiB, not 16.
CARDS: tuple[Gpu, ...] = tuple(_catalog_card(*spec) for spec in (
    ("RTX 2070", 8192, (7, 5)),
    ("RTX 2080", 8192, (7, 5)),
    ("RTX 2080 Ti", 11264, (7, 5)),
    ("RTX 3060", 12288, (8, 6)),
    ("RTX 3060 Ti", 8192, (8, 6)),
    ("RTX 3070", 8192, (8, 6)),
    ("RTX 3080", 10240, (8, 6)),
    ("RTX 3080 12GB", 12288, (8, 6)),
    ("RTX 3090", 24576, (8, 6)),
    ("RTX 4060", 8188, (8, 9)),
    ("RTX 4060 Ti 16GB", 16380, (8, 9)),
    ("RTX 4070", 12282, (8, 9)),
    ("RTX 4080", 16376, (8, 9)),
    ("RTX 4090", 24564, (8, 9)),
    ("T4", 15360, (7, 5)),
    ("L4", 23034, (8, 9)),
    ("A10G", 23028, (8, 6)),
    ("V100 16GB", 16384, (7, 0)),
    ("V100 32GB", 32768, (7, 0)),
    ("A100 40GB", 40960, (8, 0)),
    ("A100 80GB", 81920, (8, 0)),
    ("H100 80GB", 81559, (9, 0)),
))

_NOISE = re.compile(r"nvidia|geforce|tesla|rtx|gtx|[^a-z0-9]")
_MEMORY_SIZE = re.compile(r"\d+gb")


def _key(name: str) -> str:
    """'NVIDIA GeForce RTX 2080 Ti' and 'rtx2080ti' both become '2080ti'."""
    return _NOISE.sub("", name.lower())


def card(name: str) -> Gpu:
    """A catalog card by forgiving name: 'rtx2080', 'RTX 2080', '2080', 'a100-80gb', 'h100'.

    The memory size of a card may be left out when only one card of that name is in the catalog
    ('h100', '4060ti'), nothing else: 'rtx 4060' is the RTX 4060, never the first card whose name
    starts with it.

    Raises:
        UsageError: no card, or more than one, matches; the message lists close names.
    """
    key = _key(name)
    by_key = {_key(c.name): c for c in CARDS}
    if key in by_key:
        return by_key[key]
    starting = {k: c for k, c in by_key.items() if key and k.startswith(key)}
    sized = [c for k, c in starting.items() if _MEMORY_SIZE.fullmatch(k[len(key):])]
    if len(sized) == 1:
        return sized[0]
    if sized:
        raise UsageError(f"GPU name {name!r} matches several cards: {', '.join(c.name for c in sized)}; name one")
    close = [by_key[k].name for k in difflib.get_close_matches(key, by_key, n=4, cutoff=0.5)]
    close = list(dict.fromkeys([c.name for c in starting.values()] + close))[:4]
    listed = ", ".join(close) if close else ", ".join(c.name for c in CARDS)
    raise UsageError(f"unknown GPU {name!r}; {'did you mean' if close else 'known cards are'}: {listed} "
                     "(or give the memory with --vram GIB)")


def gpu_from_vram(gib: float) -> Gpu:
    """A GPU known only by its memory, for ``--vram``.

    The number is read as GiB, because that is what "an 8 GB card" holds (8192 MiB) and what
    nvidia-smi shows. The compute capability stays unknown, so precision/attention rules that
    depend on it are not checked (``--gpu NAME`` checks them); bf16 and fp16 need the same memory.

    Raises:
        UsageError: gib is not a positive number.
    """
    if not (gib > 0 and math.isfinite(gib)):
        raise UsageError(f"--vram must be a positive number of GiB, got {gib}")
    return Gpu(name=f"{gib:g} GiB card", total_bytes=int(gib * GIB), free_bytes=None, compute_capability=None)
