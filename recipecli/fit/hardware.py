"""The GPUs of this machine, as NVML reports them.

``probe``/``detect`` are the only code in recipecli that talks to the driver; they return
``gpu_catalog.Gpu`` values, and everything downstream takes those as data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .gpu_catalog import Gpu


@dataclass(frozen=True)
class Probe:
    """What NVML reported: the visible GPUs, and why there are none when there are none."""

    gpus: tuple[Gpu, ...]
    note: str  # one line; empty when GPUs were found
    # this process's device memory on each of ``gpus`` as nvidia-smi lists it (context, reserved
    # segments, library buffers); None where NVML does not say: no CUDA context here yet, or a
    # container whose process ids NVML reports from outside it
    process_bytes: tuple[Optional[int], ...] = ()


def probe() -> Probe:
    """Ask the NVIDIA driver which GPUs this process may use. Never raises.

    Honors CUDA_VISIBLE_DEVICES (indexes or GPU-UUID prefixes) the way CUDA does, so the GPU
    reported first is the one training will use as cuda:0.

    Returns:
        The visible GPUs in CUDA order, with a one-line reason when there are none, and the
        memory this process holds on each (``Probe.process_bytes``).
    """
    try:
        import pynvml  # only here: importing recipecli must not need the NVIDIA library
    except ImportError:
        return Probe((), "nvidia-ml-py is not installed, so GPUs cannot be detected (pip install nvidia-ml-py)")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return Probe((), "no NVIDIA driver found (libnvidia-ml is missing): this machine has no usable NVIDIA GPU")
    except pynvml.NVMLError_DriverNotLoaded:
        return Probe((), "the NVIDIA driver is installed but not loaded (try nvidia-smi, or reboot after installing)")
    except pynvml.NVMLError as exc:
        return Probe((), f"the NVIDIA driver did not answer: {exc}")
    try:
        found = _all_gpus(pynvml)
        gpus = _visible([(gpu, uuid) for gpu, uuid, _ in found], os.environ.get("CUDA_VISIBLE_DEVICES"))
        used = {gpu.index: processes for gpu, _, processes in found}
    except pynvml.NVMLError as exc:
        return Probe((), f"the NVIDIA driver did not answer: {exc}")
    finally:
        pynvml.nvmlShutdown()
    if gpus:
        return Probe(gpus, "", tuple(_used_by(used[gpu.index], os.getpid()) for gpu in gpus))
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return Probe((), f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU")
    return Probe((), "the NVIDIA driver is loaded but reports no GPU")


def detect() -> tuple[Gpu, ...]:
    """The GPUs this process may use, in CUDA order; empty when there are none. Never raises."""
    return probe().gpus


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older bindings return bytes


def _all_gpus(pynvml) -> list[tuple[Gpu, str, list]]:
    driver = _text(pynvml.nvmlSystemGetDriverVersion())
    found = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        gpu = Gpu(
            name=_text(pynvml.nvmlDeviceGetName(handle)),
            total_bytes=int(memory.total),
            free_bytes=int(memory.free),
            compute_capability=tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle)),
            driver=driver,
            index=index,
        )
        found.append((gpu, _text(pynvml.nvmlDeviceGetUUID(handle)), _compute_processes(pynvml, handle)))
    return found


def _compute_processes(pynvml, handle) -> list:
    """The processes with a CUDA context on the device; empty where NVML may not list them."""
    try:
        return list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
    except pynvml.NVMLError:  # NOT_SUPPORTED or NO_PERMISSION (some virtualized cards): unknown, not fatal
        return []


def _used_by(processes, pid: int) -> Optional[int]:
    """Bytes NVML lists for process ``pid``, or None when it is not listed or its figure is not
    available (NVML then reports None, or an all-ones value on older bindings)."""
    used = [p.usedGpuMemory for p in processes if p.pid == pid]
    if not used or any(u is None or u >= 2**63 for u in used):
        return None
    return sum(used)


def _visible(found: list[tuple[Gpu, str]], spec: Optional[str]) -> tuple[Gpu, ...]:
    """Apply CUDA_VISIBLE_DEVICES: CUDA stops at the first entry it cannot resolve."""
    if spec is None:
        return tuple(gpu for gpu, _ in found)
    chosen: list[Gpu] = []
    for entry in (e.strip() for e in spec.split(",")):
        if entry.isdigit():
            match = [gpu for gpu, _ in found if gpu.index == int(entry)]
        else:
            match = [gpu for gpu, uuid in found if entry and uuid.startswith(entry)]
        if len(match) != 1 or match[0] in chosen:
            break
        chosen.append(match[0])
    return tuple(chosen)
