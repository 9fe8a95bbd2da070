"""GPUs as data: detection never raises, the catalog forgives spelling, --vram is GiB."""
from __future__ import annotations

import ctypes.util
import sys

import pytest

from recipecli.errors import ExitCode, UsageError
from recipecli.fit.gpu_catalog import CARDS, Gpu, card, gpu_from_vram
from recipecli.fit.hardware import _visible, detect, probe
from recipecli.units import GIB, MIB

# Whether the NVIDIA driver's library is installed, asked of the loader rather than of the code
# under test, so the tests below know what probe() must answer.
DRIVER = ctypes.util.find_library("nvidia-ml") is not None
NO_DRIVER_NOTE = "no NVIDIA driver found (libnvidia-ml is missing): this machine has no usable NVIDIA GPU"


@pytest.mark.skipif(DRIVER, reason="the NVIDIA driver is installed here")
def test_without_a_driver_nothing_is_detected_and_the_note_says_why():
    found = probe()
    assert found == type(found)((), NO_DRIVER_NOTE)
    assert detect() == ()


@pytest.mark.skipif(not DRIVER, reason="no NVIDIA driver here")
def test_with_a_driver_every_visible_gpu_is_described(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    found = probe()
    assert found.gpus and found.note == "" and detect() == found.gpus
    for index, gpu in enumerate(found.gpus):
        assert gpu.index == index and gpu.driver and gpu.name
        assert 0 <= gpu.free_bytes <= gpu.total_bytes and gpu.total_bytes > GIB
        assert gpu.compute_capability >= (3, 0)


def test_no_gpu_note_names_the_cause(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    found = probe()
    assert found.gpus == ()
    assert found.note == ("CUDA_VISIBLE_DEVICES='' hides every GPU" if DRIVER else NO_DRIVER_NOTE)


def test_without_the_nvml_bindings_the_note_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # what `import pynvml` finds when it is not installed
    found = probe()
    assert found.gpus == () and "nvidia-ml-py is not installed" in found.note and "pip install" in found.note


@pytest.mark.parametrize("name", ["rtx2080", "RTX 2080", "2080", "NVIDIA GeForce RTX 2080", "rtx-2080"])
def test_forgiving_names(name):
    gpu = card(name)
    assert gpu.name == "RTX 2080"
    assert gpu.total_bytes == 8 * GIB and gpu.compute_capability == (7, 5)
    assert gpu.supports_bf16 is False and gpu.supports_flash_attention_2 is False


@pytest.mark.parametrize("name, gib, capability", [
    ("2080ti", 11, (7, 5)), ("3060 12gb", 12, (8, 6)), ("rtx 3060 8gb", 8, (8, 6)), ("3080 10gb", 10, (8, 6)),
    ("3080 12gb", 12, (8, 6)), ("3090", 24, (8, 6)), ("t4", 15, (7, 5)), ("a100-40gb", 40, (8, 0)),
    ("a100-80gb", 80, (8, 0)), ("A100 80GB", 80, (8, 0)), ("v100 32gb", 32, (7, 0)),
])
def test_catalog_memory_and_capability(name, gib, capability):
    gpu = card(name)
    assert gpu.total_bytes == gib * GIB
    assert gpu.compute_capability == capability


def test_cards_reported_slightly_below_their_marketed_size():
    # What the driver reports is what a run can use: ECC and firmware take a little.
    for name, marketed in (("rtx4090", 24), ("l4", 24), ("a10g", 24), ("h100", 80), ("h200", 141)):
        gpu = card(name)
        assert marketed * GIB - 2 * GIB < gpu.total_bytes < marketed * GIB
    assert card("4090").compute_capability == (8, 9) and card("h100").compute_capability == (9, 0)
    assert card("a10g").supports_bf16 and card("l4").supports_flash_attention_2


def test_every_catalog_card_is_found_by_its_own_name():
    assert all(card(c.name) is c for c in CARDS)
    assert len({c.name for c in CARDS}) == len(CARDS)


def test_a_model_sold_in_one_size_needs_no_size():
    assert card("h100").name == "H100 80GB"
    assert card("rtx 4090").name == "RTX 4090"


@pytest.mark.parametrize("name, candidates", [
    ("a100", "A100 40GB, A100 80GB"),
    ("v100", "V100 16GB, V100 32GB"),
    # Defect 12: "4060 ti" silently became the 16 GB card; the 8 GB one is as common.
    ("4060 ti", "RTX 4060 Ti 8GB, RTX 4060 Ti 16GB"),
    ("4060ti", "RTX 4060 Ti 8GB, RTX 4060 Ti 16GB"),
    ("NVIDIA GeForce RTX 4060 Ti", "RTX 4060 Ti 8GB, RTX 4060 Ti 16GB"),  # what nvidia-smi shows for both
    ("3080", "RTX 3080 10GB, RTX 3080 12GB"),
    ("rtx 3060", "RTX 3060 8GB, RTX 3060 12GB"),
])
def test_an_ambiguous_name_asks_and_lists_the_candidates(name, candidates):
    with pytest.raises(UsageError) as exc:
        card(name)
    error = exc.value
    assert f"{name!r} matches several cards: {candidates}" in error.message
    assert error.where == "--gpu" and error.exit_code == ExitCode.USAGE and "memory size" in error.hint


@pytest.mark.parametrize("name, expected", [
    ("rtx 4060 ti 8gb", "RTX 4060 Ti 8GB"), ("4060 Ti 16GB", "RTX 4060 Ti 16GB"), ("4060ti-8gb", "RTX 4060 Ti 8GB"),
    ("rtx 3060 12gb", "RTX 3060 12GB"), ("3080 12 GB", "RTX 3080 12GB"), ("rtx3080-10gb", "RTX 3080 10GB"),
    ("a100 80gb", "A100 80GB"), ("a10080gb", "A100 80GB"), ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
    ("NVIDIA H100 80GB HBM3", "H100 80GB"), ("Tesla V100-SXM2-16GB", "V100 16GB"),
    ("t4 16gb", "T4"), ("rtx 2080 8gb", "RTX 2080"),  # the marketed size of a one-size model
])
def test_a_size_after_the_name_selects_the_variant(name, expected):
    assert card(name).name == expected


def test_the_8gb_4060_ti_is_in_the_catalog():
    gpu = card("4060 ti 8gb")
    assert gpu.total_bytes == 8188 * MIB and gpu.compute_capability == (8, 9)
    assert card("4060 ti 16gb").total_bytes == 16380 * MIB


@pytest.mark.parametrize("name, sizes", [("3080 16gb", "10 GB or 12 GB"), ("4060 ti 12gb", "8 GB or 16 GB"),
                                         ("a100 24gb", "40 GB or 80 GB"), ("t4 8gb", "16 GB")])
def test_a_size_no_variant_has_is_an_error_listing_the_sizes(name, sizes):
    with pytest.raises(UsageError) as exc:
        card(name)
    assert exc.value.message.endswith(f"comes with {sizes}")
    assert exc.value.where == "--gpu" and "--vram" in exc.value.hint


def test_unknown_card_suggests_close_names_and_vram():
    with pytest.raises(UsageError) as exc:
        card("rtx 2090")
    assert "did you mean" in exc.value.message and "RTX 2080" in exc.value.message and "--vram" in exc.value.hint
    assert exc.value.exit_code == 2


def test_vram_is_gib_with_unknown_capability():
    gpu = gpu_from_vram(8)
    assert gpu.total_bytes == 8 * GIB == card("rtx2080").total_bytes
    assert gpu.compute_capability is None and gpu.supports_bf16 is None and gpu.capability_text == "unknown"
    assert gpu_from_vram(7.5).total_bytes == int(7.5 * GIB)


@pytest.mark.parametrize("bad", [0, -8, float("nan"), float("inf"), 1e-10, 1e300])  # 1e-10: 0 bytes; 1e300: overflow
def test_vram_must_be_a_positive_number(bad):
    with pytest.raises(UsageError, match="--vram"):
        gpu_from_vram(bad)


def _found(*uuids):
    return [(Gpu(f"gpu{i}", GIB, GIB, (8, 0), "550", i), uuid) for i, uuid in enumerate(uuids)]


def test_cuda_visible_devices_picks_and_orders_gpus():
    found = _found("GPU-aaa", "GPU-bbb", "GPU-ccc")
    assert [g.index for g in _visible(found, None)] == [0, 1, 2]
    assert [g.index for g in _visible(found, "2,0")] == [2, 0]
    assert [g.index for g in _visible(found, "GPU-b")] == [1]
    # CUDA stops at the first entry it cannot resolve, and at a repeated one.
    assert [g.index for g in _visible(found, "1,7,0")] == [1]
    assert [g.index for g in _visible(found, "0,0,1")] == [0]
    assert _visible(found, "") == () and _visible(found, "-1") == ()


def test_a_name_is_never_taken_for_a_longer_one():
    # "rtx 4060" is its own card, not the first card whose name starts with it (the 4060 Ti).
    assert card("rtx 4060").name == "RTX 4060"
    assert card("NVIDIA GeForce RTX 4060").total_bytes == 8188 * MIB
    with pytest.raises(UsageError, match="unknown GPU '4060 t'.*RTX 4060 Ti 8GB, RTX 4060 Ti 16GB"):
        card("4060 t")
    with pytest.raises(UsageError, match="unknown GPU 'a10'"):  # neither the A10G nor an A100
        card("a10")


def _process(pid, used):
    """What NVML lists for one process with a CUDA context (nvmlProcessInfo_t's fields read here)."""
    return type("ProcessInfo", (), {"pid": pid, "usedGpuMemory": used})()


def test_a_process_memory_is_what_nvml_lists_for_its_pid():
    from recipecli.fit.hardware import _used_by

    listed = [_process(10, 500 * MIB), _process(11, 2 * GIB)]
    assert _used_by(listed, 11) == 2 * GIB
    assert _used_by(listed + [_process(11, MIB)], 11) == 2 * GIB + MIB  # listed twice (MIG): both count
    # not listed: no CUDA context yet, or a container whose ids NVML gives from outside it
    assert _used_by(listed, 12) is None and _used_by([], 10) is None
    # NVML's "not available": None from current bindings, all ones from older ones
    assert _used_by([_process(10, None)], 10) is None
    assert _used_by([_process(10, 2**64 - 1)], 10) is None


def test_a_device_that_may_not_list_processes_lists_none():
    from recipecli.fit.hardware import _compute_processes

    class Bindings:  # the two names of pynvml that _compute_processes uses
        class NVMLError(Exception):
            pass

        @staticmethod
        def nvmlDeviceGetComputeRunningProcesses(handle):
            if handle == "virtual":
                raise Bindings.NVMLError("Not Supported")
            return (_process(1, MIB),)

    assert _compute_processes(Bindings, "virtual") == []
    assert [p.pid for p in _compute_processes(Bindings, "card")] == [1]


@pytest.mark.skipif(not DRIVER, reason="no NVIDIA driver here")
def test_with_a_driver_this_process_memory_is_given_per_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    found = probe()
    assert len(found.process_bytes) == len(found.gpus)
    assert all(used is None or 0 < used <= gpu.total_bytes for used, gpu in zip(found.process_bytes, found.gpus))
