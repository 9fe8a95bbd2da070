"""`recipe probe --device cuda` without a GPU: everything but the torch.cuda calls runs on the CPU,
with a meter that reads the recorder's own real-tensor events, and must agree with
probe.trace_step to the byte. The CUDA meter itself is tested only where a GPU is present."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("trl")

from recipecli.errors import ExitCode, UsageError  # noqa: E402
from recipecli.read.load import load_recipe  # noqa: E402
from recipecli.report.probe import measured_json, measured_text  # noqa: E402
from recipecli.train.gpuprobe import (CpuMeter, DeviceOutOfMemory, choose_device, measure_on_device,  # noqa: E402
                                      measure_step)
from recipecli.train.measure import measure  # noqa: E402
from recipecli.train.probe import trace_step  # noqa: E402

from ..conftest import RECIPES  # noqa: E402

LLAMA = dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256)
BATCH = dict(seq_len=64, micro_batch=2)
PHASES = ["load", "forward", "backward", "optimizer"]
CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("method, checkpointing, precision", [("lora", True, "fp32"), ("full", False, "bf16")])
def test_the_cpu_meter_measures_what_the_real_tensor_trace_counts(method, checkpointing, precision):
    """Every trace_step option reaches the measured run (bf16: autocast on the batch's device)."""
    options = dict(method=method, gradient_checkpointing=checkpointing, precision=precision, **BATCH)
    trace, measured = measure_step(LLAMA, CpuMeter(), steps=2, timed_steps=1, **options)
    reference = trace_step(LLAMA, fake=False, steps=2, **options)
    assert [p.name for p in measured.phases] == PHASES
    assert {p.name: p.allocated_bytes for p in measured.phases} == reference.phase_peaks
    assert measured.allocated_bytes == reference.peak_bytes
    # the untraced third step left the trace of two steps as trace_step records them
    assert [e.nbytes for e in trace.events] == [e.nbytes for e in reference.events]
    assert (trace.peak_bytes, trace.breakdown, trace.end_bytes) == (reference.peak_bytes, reference.breakdown,
                                                                    reference.end_bytes)
    assert measured.reserved_bytes is None and measured.memory_stats == {}  # the CPU has no caching allocator
    assert measured.timed_tokens == 2 * 64 and measured.tokens_per_second > 0


class _CountingMeter(CpuMeter):
    """The CPU meter's real peaks, plus what a CUDA meter adds (a reserved figure, the process's
    memory, allocator statistics, untraced peaks) as known numbers, to check the bookkeeping
    around them. The calls are recorded in order."""

    SEGMENT = 2 << 20

    def __init__(self):
        super().__init__()
        self.calls = []

    def reset(self):
        self.calls.append("reset")
        super().reset()

    def peaks(self):
        allocated, _ = super().peaks()
        if allocated is None:  # the untraced steps: no events to read
            return 7, 8
        return allocated, -(-allocated // self.SEGMENT) * self.SEGMENT

    def process_bytes(self):
        self.calls.append("process")
        return 123, 456

    def snapshot(self):
        self.calls.append("snapshot")
        return {"num_alloc_retries": 0}


def test_reserved_peaks_process_memory_and_untraced_peaks_are_kept_per_phase():
    meter = _CountingMeter()
    trace, measured = measure_step(LLAMA, meter, steps=3, timed_steps=2, method="lora", **BATCH)
    by_phase = {p.name: p for p in measured.phases}
    assert list(by_phase) == PHASES
    # three forwards, one figure: the highest of them, which is the trace's
    assert by_phase["forward"].allocated_bytes == trace.phase_peaks["forward"]
    for p in measured.phases:
        assert p.reserved_bytes == -(-p.allocated_bytes // meter.SEGMENT) * meter.SEGMENT
    assert measured.reserved_bytes == max(p.reserved_bytes for p in measured.phases)
    assert (measured.process_bytes, measured.card_used_bytes) == (123, 456)
    assert measured.memory_stats == {"num_alloc_retries": 0}
    assert (measured.untraced_allocated_bytes, measured.untraced_reserved_bytes) == (7, 8)
    # read once, when the traced steps end and before the timed ones start
    assert meter.calls.count("process") == meter.calls.count("snapshot") == 1
    assert meter.calls.index("process") < len(meter.calls) - 2
    assert measured.timed_steps == 2 and measured.timed_tokens == 2 * 2 * 64
    assert measured.seconds_per_step == measured.timed_seconds / 2


def test_without_timed_steps_the_last_phase_is_still_measured():
    trace, measured = measure_step(LLAMA, CpuMeter(), steps=1, timed_steps=0, method="lora", **BATCH)
    assert [p.name for p in measured.phases] == PHASES
    assert measured.phases[-1].allocated_bytes == trace.phase_peaks["optimizer"]
    assert measured.tokens_per_second is None and measured.seconds_per_step is None


@pytest.fixture
def tiny_lora(make_recipe, offline):
    return load_recipe(make_recipe({"model": {"id": str(RECIPES / "models" / "tiny-llama")}, "method": "lora",
                                    "data": {"max_seq_length": 64}, "training": {"micro_batch_size": 2}}))


def test_a_recipe_measured_equals_its_fake_trace_and_reports_both(tiny_lora):
    measured = measure_on_device(tiny_lora, steps=2, meter=CpuMeter(), timed_steps=1)
    fake = measure(tiny_lora, steps=2)
    assert measured.measured.allocated_bytes == measured.probe.allocated_bytes == fake.allocated_bytes
    assert [p.allocated_bytes for p in measured.probe.phases] == [p.allocated_bytes for p in fake.phases]
    assert measured.probe.steps == 2 and measured.probe.estimate == fake.estimate

    out = measured_json(measured, "r.yaml")
    assert out["traced_on"] == "cpu" and out["fake_tensors"] is False
    assert out["measured"]["device"] == "cpu" and list(out["measured"]["phases"]) == PHASES
    assert out["measured"]["allocated_bytes"] == out["allocated_bytes"]
    assert out["measured"]["tokens_per_second"] > 0 and out["measured"]["timed_steps"] == 1
    text = measured_text(measured, "r.yaml")
    assert text.splitlines()[1].startswith("measured on cpu: allocated peaks per phase of real CPU tensors")
    assert "1 more untraced:" in text and "tokens/s" in text


class _FullMeter(CpuMeter):
    """A device that runs out of memory in the first forward, as torch reports it."""

    name = "a full card"

    def peaks(self):
        if self._trace is not None and len(self._trace.events) > self._start:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nIf reserved but ...")
        return super().peaks()


def test_running_out_of_device_memory_does_not_fit_and_points_to_the_cpu(tiny_lora):
    with pytest.raises(DeviceOutOfMemory) as caught:
        measure_on_device(tiny_lora, steps=1, meter=_FullMeter(), timed_steps=0)
    error = caught.value
    assert error.exit_code == ExitCode.DOES_NOT_FIT and error.where == "--device"
    assert error.message == "the steps do not fit a full card: CUDA out of memory. Tried to allocate 2.00 GiB."
    assert error.hint == "trace them on the CPU, which needs no GPU memory: --device cpu"
    assert error.__context__ is None  # raised after the out-of-memory error and its frames were let go


def test_the_device_is_cuda_only_where_torch_sees_one():
    assert choose_device("cpu") == "cpu"
    assert choose_device("auto") == ("cuda" if CUDA else "cpu")
    with pytest.raises(ValueError):
        choose_device("tpu")


@pytest.mark.skipif(CUDA, reason="a GPU is here")
def test_cuda_without_a_gpu_is_a_usage_error_with_the_reason():
    with pytest.raises(UsageError) as caught:
        choose_device("cuda")
    error = caught.value
    assert error.exit_code == ExitCode.USAGE and error.where == "--device"
    assert "no CUDA GPU" in error.message and "--device cpu" in error.hint
    if torch.version.cuda is None:
        assert f"this torch ({torch.__version__}) is built without CUDA" in error.message


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_on_a_gpu_the_counters_agree_with_the_trace_of_the_same_steps():
    from recipecli.fit.allocator import MIN_BLOCK
    from recipecli.train.gpuprobe import CudaMeter

    trace, measured = measure_step(LLAMA, CudaMeter(), steps=2, timed_steps=2, method="lora", **BATCH)
    load = measured.phases[0]
    storages = sum(1 for e in trace.events if e.phase == "load" and e.nbytes > 0)
    # building may take temporaries; what is left are the traced storages, each rounded to 512 bytes
    assert trace.phase_peaks["load"] <= load.allocated_bytes
    for p in measured.phases:
        assert p.allocated_bytes <= p.reserved_bytes
    assert measured.allocated_bytes >= trace.peak_bytes - MIN_BLOCK * storages
    # tracing holds nothing: the untraced steps peak where the traced ones did (equal on an H200,
    # 2026-11-30); memory_stats' peaks are the last phase's (each phase resets them), so not those
    assert abs(measured.untraced_allocated_bytes - measured.allocated_bytes) <= 0.01 * measured.allocated_bytes
    assert measured.memory_stats["num_alloc_retries"] >= 0
    assert measured.tokens_per_second > 0
    assert measured.process_bytes is None or measured.process_bytes > measured.reserved_bytes


def test_the_measured_peaks_are_the_training_steps_not_the_models_building():
    """On an H200 building Gemma's random 256k-word embedding, or a QLoRA base in 16 bits, was the
    highest phase of some cases: no memory a run that loads its weights holds."""
    from recipecli.train.gpuprobe import MeasuredPhase, Measurement

    phases = (MeasuredPhase("load", 900, 1000), MeasuredPhase("forward", 300, 400),
              MeasuredPhase("backward", 350, 400), MeasuredPhase("optimizer", 200, 400))
    m = Measurement(device="gpu", kind="cuda", phases=phases, process_bytes=None, card_used_bytes=None,
                    memory_stats={}, steps=1, timed_steps=0, timed_tokens=0, timed_seconds=0.0,
                    untraced_allocated_bytes=None, untraced_reserved_bytes=None)
    assert (m.allocated_bytes, m.reserved_bytes) == (350, 400)
    assert [p.name for p in m.phases] == PHASES  # the load is still shown, as its own row
