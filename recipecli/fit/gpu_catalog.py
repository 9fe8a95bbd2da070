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
TF32_MIN_CAPABILITY = (8, 0)  # Ampere: the tensor cores that compute TF32

# What nvidia-smi shows for a process beyond PyTorch's reserved memory: the CUDA context (driver
# state, the per-SM local-memory reservation, the kernels loaded so far). With lazy module
# loading, which PyTorch turns on since 1.13 and CUDA 12.2 makes the default, PyTorch measured
# 287,047,680 bytes for a context with one tensor (eager loading: 666,632,192; pytorch/pytorch
# PR #86509), and its maintainers quote ~300 MB (pytorch/pytorch#107667) to ~400 MB
# (pytorch/pytorch#109888) for CUDA >= 11.7. The per-SM part grows with the SM count and the
# resident threads per SM of the architecture, so newer, larger chips sit at the upper end; the
# kernels a training step adds (bitsandbytes, attention) are tens of MiB on top. By major compute
# capability, the upper end of those reports for the largest chip of each generation.
# Hopper's is measured: on an H200 (torch 2.11, CUDA 13.0, driver 580) nvidia-smi showed the
# training process 744 to 768 MiB above PyTorch's reserved memory in each of 21 measured steps
# (benchmarks/measured/h200-2026-11-30-*, BENCHMARKS.md), the reports' 500 MiB being too kind.
CUDA_CONTEXT_MIB = {7: 300, 8: 400, 9: 768}
# A card known by its memory alone (--vram): the reports' upper end, 500 MiB, above every card before
# Hopper. Taking the H200's measured figure would judge the cards --vram is for (consumer ones
# pynvml cannot see) by the largest chip there is, and published runs that fit 24 GB at their
# longest context (benchmarks/calibration.py's boundary rows) would be called out of memory.
UNKNOWN_CONTEXT_MIB = 500
# cuBLAS's workspace, which PyTorch takes from its caching allocator (so it is counted in
# reserved, not in the context): the default CUBLAS_WORKSPACE_CONFIG ":4096:2:16:8" is
# 8,519,680 bytes, and from Hopper (9.0) on PyTorch's default is 32 MiB
# (aten/src/ATen/cuda/CublasHandlePool.cpp, getChosenWorkspaceSize; cuBLASLt shares it).
CUBLAS_WORKSPACE_BYTES = {7: 8_519_680, 8: 8_519_680, 9: 32 * MIB}


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
    def supports_tf32(self) -> Optional[bool]:
        cc = self.compute_capability
        return None if cc is None else cc >= TF32_MIN_CAPABILITY

    @property
    def supports_flash_attention_2(self) -> Optional[bool]:
        cc = self.compute_capability
        return None if cc is None else cc >= FLASH_ATTENTION_2_MIN_CAPABILITY

    @property
    def context_bytes(self) -> int:
        """What nvidia-smi counts for the process before PyTorch reserves anything (CUDA_CONTEXT_MIB)."""
        return context_bytes(self.compute_capability)

    @property
    def workspace_bytes(self) -> int:
        """cuBLAS's workspace, reserved through PyTorch's caching allocator (CUBLAS_WORKSPACE_BYTES)."""
        return workspace_bytes(self.compute_capability)


def _generation(capability: Optional[tuple[int, int]], table: dict) -> Optional[int]:
    """The table's key for a capability: its major version, clamped to the generations listed."""
    return None if capability is None else min(max(capability[0], min(table)), max(table))


def context_bytes(capability: Optional[tuple[int, int]]) -> int:
    """The CUDA context of a card of this compute capability (None: unknown, the largest)."""
    major = _generation(capability, CUDA_CONTEXT_MIB)
    return (UNKNOWN_CONTEXT_MIB if major is None else CUDA_CONTEXT_MIB[major]) * MIB


def workspace_bytes(capability: Optional[tuple[int, int]]) -> int:
    """cuBLAS's workspace on a card of this compute capability (None: unknown, the largest)."""
    major = _generation(capability, CUBLAS_WORKSPACE_BYTES)
    return max(CUBLAS_WORKSPACE_BYTES.values()) if major is None else CUBLAS_WORKSPACE_BYTES[major]


@dataclass(frozen=True)
class _Entry:
    """A catalog card and what a user may call it: its model (family) and the size it is sold with."""

    gpu: Gpu
    family: str  # the name without its memory size, as a key: '3080' for both RTX 3080s
    gb: int  # the marketed memory size ("12 GB"), which selects among a family's variants


# Name (with the size when the model is sold in several), marketed GB, MiB the driver reports
# (nvidia-smi), compute capability. The reported memory is below the marketed size for
# data-centre cards (ECC and firmware reservations): a fit-check against a T4 uses 15 GiB, not 16.
_SPECS = (
    ("RTX 2070", 8, 8192, (7, 5)),
    ("RTX 2080", 8, 8192, (7, 5)),
    ("RTX 2080 Ti", 11, 11264, (7, 5)),
    ("RTX 3060 8GB", 8, 8192, (8, 6)),
    ("RTX 3060 12GB", 12, 12288, (8, 6)),
    ("RTX 3060 Ti", 8, 8192, (8, 6)),
    ("RTX 3070", 8, 8192, (8, 6)),
    ("RTX 3080 10GB", 10, 10240, (8, 6)),
    ("RTX 3080 12GB", 12, 12288, (8, 6)),
    ("RTX 3090", 24, 24576, (8, 6)),
    ("RTX 4060", 8, 8188, (8, 9)),
    ("RTX 4060 Ti 8GB", 8, 8188, (8, 9)),
    ("RTX 4060 Ti 16GB", 16, 16380, (8, 9)),
    ("RTX 4070", 12, 12282, (8, 9)),
    ("RTX 4080", 16, 16376, (8, 9)),
    ("RTX 4090", 24, 24564, (8, 9)),
    ("T4", 16, 15360, (7, 5)),
    ("L4", 24, 23034, (8, 9)),
    ("A10G", 24, 23028, (8, 6)),
    ("V100 16GB", 16, 16384, (7, 0)),
    ("V100 32GB", 32, 32768, (7, 0)),
    ("A100 40GB", 40, 40960, (8, 0)),
    ("A100 80GB", 80, 81920, (8, 0)),
    ("H100 80GB", 80, 81559, (9, 0)),
    ("H200", 141, 143771, (9, 0)),  # as nvidia-smi showed it on a lent one (benchmarks/measured/)
)

# Words nvidia-smi puts around the model ("NVIDIA GeForce RTX 4060 Ti", "NVIDIA A100-SXM4-80GB",
# "NVIDIA H100 80GB HBM3"), so a name copied from it is found.
_NOISE = re.compile(r"nvidia|geforce|tesla|quadro|rtx|gtx|sxm\d*|pcie|hbm\d*e?")
# A memory size written after the name, apart from it: "3060 12gb", "a100-80gb", "3080 12 GB".
_SIZED = re.compile(r"(.*[a-z0-9])[^a-z0-9]+(\d+)\s*gi?b")
_SIZE_SUFFIX = re.compile(r"\s*\d+GB$")


def _key(name: str) -> str:
    """'NVIDIA GeForce RTX 2080 Ti' and 'rtx2080ti' both become '2080ti'."""
    return re.sub(r"[^a-z0-9]", "", _NOISE.sub(" ", name.lower()))


def _entry(name: str, gb: int, mib: int, capability: tuple[int, int]) -> _Entry:
    gpu = Gpu(name=name, total_bytes=mib * MIB, free_bytes=None, compute_capability=capability)
    return _Entry(gpu, _key(_SIZE_SUFFIX.sub("", name)), gb)


_ENTRIES: tuple[_Entry, ...] = tuple(_entry(*spec) for spec in _SPECS)
CARDS: tuple[Gpu, ...] = tuple(e.gpu for e in _ENTRIES)


def card(name: str) -> Gpu:
    """A catalog card by forgiving name: 'rtx2080', 'RTX 2080', '2080', 'a100-80gb', 'h100'.

    A model sold with several memory sizes needs the size after its name ('3080 12gb',
    'rtx 4060 ti 8gb', 'a100 80gb'); a model sold with one size needs none ('h100', '4090').
    Nothing else is guessed: 'rtx 4060' is the RTX 4060, never the first card whose name starts
    with it, and '4060 ti' asks which of the two.

    Raises:
        UsageError: no card, or more than one, matches; the message lists the candidates, the
            sizes a model comes in, or close names.
    """
    key = _key(name)
    exact = [e.gpu for e in _ENTRIES if _key(e.gpu.name) == key]
    if key and exact:
        return exact[0]
    sized = _SIZED.fullmatch(_NOISE.sub(" ", name.lower()).strip())
    family, gb = (_key(sized[1]), int(sized[2])) if sized else (key, None)
    variants = [e for e in _ENTRIES if family and e.family == family]
    if variants and gb is not None:
        chosen = [e.gpu for e in variants if e.gb == gb]
        if chosen:
            return chosen[0]
        sizes = " or ".join(f"{e.gb} GB" for e in variants)
        model = _SIZE_SUFFIX.sub("", variants[0].gpu.name)
        raise UsageError(f"there is no {gb} GB {model} in the catalog: it comes with {sizes}",
                         hint=f"name a size it comes with, e.g. --gpu '{sized[1]} {variants[-1].gb}gb', "
                              f"or give the memory with --vram {gb}", where="--gpu")
    if len(variants) == 1:
        return variants[0].gpu
    if variants:
        raise UsageError(f"GPU name {name!r} matches several cards: {', '.join(e.gpu.name for e in variants)}",
                         hint=f"add the memory size, e.g. --gpu '{name} {variants[-1].gb}gb'", where="--gpu")
    by_key = {_key(c.name): c for c in CARDS}
    starting = [c.name for k, c in by_key.items() if key and k.startswith(key)]
    close = [by_key[k].name for k in difflib.get_close_matches(key, by_key, n=4, cutoff=0.5)]
    close = list(dict.fromkeys(starting + close))[:4]
    listed = ", ".join(close) if close else ", ".join(c.name for c in CARDS)
    raise UsageError(f"unknown GPU {name!r}; {'did you mean' if close else 'known cards are'}: {listed}",
                     hint="name a card listed here, or give its memory with --vram GIB (e.g. --vram 8)", where="--gpu")


def gpu_from_vram(gib: float) -> Gpu:
    """A GPU known only by its memory, for ``--vram``.

    The number is read as GiB, because that is what "an 8 GB card" holds (8192 MiB) and what
    nvidia-smi shows. The compute capability stays unknown, so precision/attention rules that
    depend on it are not checked (``--gpu NAME`` checks them); bf16 and fp16 need the same memory.

    Raises:
        UsageError: gib is not a memory size a card can have.
    """
    # From a MiB (no card is smaller) to 1 PiB (none is near it): past those, bytes divide by zero
    # or overflow an int.
    if not (math.isfinite(gib) and MIB <= gib * GIB <= 1 << 50):
        raise UsageError(f"must be a number of GiB a card can have (1/1024 to 1048576), got {gib}",
                         hint="e.g. --vram 8 for an 8 GB card", where="--vram")
    return Gpu(name=f"{gib:g} GiB card", total_bytes=int(gib * GIB), free_bytes=None, compute_capability=None)
