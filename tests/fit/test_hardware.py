"""GPUs as data: detection never raises, the catalog forgives spelling, --vram is GiB."""
from __future__ import annotations

import pytest

from recipecli.errors import UsageError
from recipecli.fit.gpu_catalog import CARDS, Gpu, card, gpu_from_vram
from recipecli.fit.hardware import _visible, detect, probe
from recipecli.units import GIB


def test_detect_never_raises_and_explains_an_empty_result():
    found = probe()
    assert found.gpus == detect()
    assert all(isinstance(g, Gpu) and g.total_bytes > 0 and g.compute_capability for g in found.gpus)
    # A reason exactly when there is nothing: on this CPU-only machine, no driver.
    assert bool(found.note) == (not found.gpus)


def test_no_gpu_note_names_the_cause(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    found = probe()
    assert found.gpus == ()
    assert "driver" in found.note or "CUDA_VISIBLE_DEVICES" in found.note


@pytest.mark.parametrize("name", ["rtx2080", "RTX 2080", "2080", "NVIDIA GeForce RTX 2080", "rtx-2080"])
def test_forgiving_names(name):
    gpu = card(name)
    assert gpu.name == "RTX 2080"
    assert gpu.total_bytes == 8 * GIB and gpu.compute_capability == (7, 5)
    assert gpu.supports_bf16 is False and gpu.supports_flash_attention_2 is False


@pytest.mark.parametrize("name, gib, capability", [
    ("2080ti", 11, (7, 5)), ("3060", 12, (8, 6)), ("3080", 10, (8, 6)), ("3080 12gb", 12, (8, 6)),
    ("3090", 24, (8, 6)), ("t4", 15, (7, 5)), ("a100-40gb", 40, (8, 0)), ("a100-80gb", 80, (8, 0)),
    ("A100 80GB", 80, (8, 0)), ("v100 32gb", 32, (7, 0)),
])
def test_catalog_memory_and_capability(name, gib, capability):
    gpu = card(name)
    assert gpu.total_bytes == gib * GIB
    assert gpu.compute_capability == capability


def test_cards_reported_slightly_below_their_marketed_size():
    # What the driver reports is what a run can use: ECC and firmware take a little.
    for name, marketed in (("rtx4090", 24), ("l4", 24), ("a10g", 24), ("h100", 80)):
        gpu = card(name)
        assert marketed * GIB - 2 * GIB < gpu.total_bytes < marketed * GIB
    assert card("4090").compute_capability == (8, 9) and card("h100").compute_capability == (9, 0)
    assert card("a10g").supports_bf16 and card("l4").supports_flash_attention_2


def test_every_catalog_card_is_found_by_its_own_name():
    assert all(card(c.name) is c for c in CARDS)
    assert len({c.name for c in CARDS}) == len(CARDS)


def test_a_unique_prefix_is_enough():
    assert card("h100").name == "H100 80GB"
    assert card("4060ti").name == "RTX 4060 Ti 16GB"


def test_an_ambiguous_name_lists_the_candidates():
    with pytest.raises(UsageError, match="A100 40GB, A100 80GB"):
        card("a100")


def test_unknown_card_suggests_close_names_and_vram():
    with pytest.raises(UsageError) as exc:
        card("rtx 2090")
    assert "did you mean" in str(exc.value) and "RTX 2080" in str(exc.value) and "--vram" in str(exc.value)
    assert exc.value.exit_code == 2


def test_vram_is_gib_with_unknown_capability():
    gpu = gpu_from_vram(8)
    assert gpu.total_bytes == 8 * GIB == card("rtx2080").total_bytes
    assert gpu.compute_capability is None and gpu.supports_bf16 is None and gpu.capability_text == "unknown"
    assert gpu_from_vram(7.5).total_bytes == int(7.5 * GIB)


@pytest.mark.parametrize("bad", [0, -8, float("nan"), float("inf")])
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


def test_a_prefix_is_taken_only_when_the_rest_is_the_memory_size():
    # "rtx 4060" is its own card, not the first card whose name starts with it (the 4060 Ti).
    assert card("rtx 4060").name == "RTX 4060"
    assert card("NVIDIA GeForce RTX 4060").total_bytes == 8188 * (1 << 20)
    assert card("rtx 4060 ti").name == "RTX 4060 Ti 16GB"  # only a size left over
    with pytest.raises(UsageError, match="unknown GPU '4060 t'.*RTX 4060 Ti 16GB"):
        card("4060 t")
