"""The storage counter against peaks derived by hand, with real CPU tensors and with fake ones.

Every size below is worked out from the shapes; fp32 is 4 bytes an element.
"""
from __future__ import annotations

import contextlib

import pytest

torch = pytest.importorskip("torch")

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from recipecli.train.memtrace import (  # noqa: E402
    ACTIVATIONS, GRADIENTS, OTHER, PAGED, TEMPORARIES, WEIGHTS, Event, MemTrace, summarize,
)

MODES = pytest.mark.parametrize("fake", [False, True], ids=["real", "fake"])


def _mode(fake: bool):
    return FakeTensorMode() if fake else contextlib.nullcontext()


@MODES
def test_linear_forward_backward_peak_is_derived_by_hand(fake):
    with _mode(fake):
        linear = torch.nn.Linear(64, 32, bias=False)  # weight 32 x 64: 8192 bytes
        x = torch.randn(8, 64, requires_grad=True)  # 2048
        grad_y = torch.randn(8, 32)  # 1024
        trace = MemTrace()
        trace.track(linear.parameters(), WEIGHTS)
        trace.track([x, grad_y], OTHER)
        with trace:
            trace.phase("forward")
            y = linear(x)  # 8 x 32: 1024
            trace.phase("backward")
            y.backward(grad_y)  # weight.grad 8192 and x.grad 2048, nothing else
        trace.tag([linear.weight.grad, x.grad], GRADIENTS)
        result = trace.result()
    assert result.phase_peaks == {"load": 11264, "forward": 12288, "backward": 22528}
    assert result.peak_bytes == 8192 + 2048 + 1024 + 1024 + 8192 + 2048
    assert result.breakdown[WEIGHTS] == 8192
    assert result.breakdown[GRADIENTS] == 8192 + 2048
    assert result.breakdown[ACTIVATIONS] == 1024  # y: alive when backward began
    assert result.breakdown[OTHER] == 3072
    assert sum(result.breakdown.values()) == result.peak_bytes
    assert [e.nbytes for e in result.events] == [8192, 2048, 1024, 1024, 8192, 2048]


class _Attention(torch.nn.Module):
    """One head of attention, written out, so what autograd saves is known op by op."""

    def __init__(self, d: int):
        super().__init__()
        self.q = torch.nn.Linear(d, d, bias=False)
        self.k = torch.nn.Linear(d, d, bias=False)
        self.v = torch.nn.Linear(d, d, bias=False)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        p = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
        return p @ v


@MODES
def test_attention_block_peak_is_derived_by_hand(fake):
    with _mode(fake):
        block = _Attention(16)  # three 16 x 16 weights: 3 x 1024
        x = torch.randn(2, 8, 16)  # 1024
        trace = MemTrace()
        trace.track(block.parameters(), WEIGHTS)
        trace.track(x, OTHER)
        with trace:
            trace.phase("forward")
            loss = block(x).sum()
            after_forward = trace.live_bytes
            trace.phase("backward")
            loss.backward()
        result = trace.result()
    # forward keeps q, k, v (2 x 8 x 16: 1024 each) and the softmax output p (2 x 8 x 8: 512) for
    # backward, and the loss (4); the scores, the scaled scores and the output (1024) are freed
    assert after_forward == 4096 + 3 * 1024 + 512 + 4
    # the peak comes in the backward of q @ k^T: q and k still saved, grad v (1024) not yet
    # consumed by v's linear backward, grad q and grad k (1024 each) just made, grad of the scores
    # (512) not yet freed, the loss and its grad of ones (4 + 4); v and p are already gone
    assert result.peak_bytes == 4096 + 2 * 1024 + 1024 + 2 * 1024 + 512 + 4 + 4
    assert result.peak_phase == "backward"
    assert result.phase_peaks["forward"] == 4096 + 3 * 1024 + 512 + 1024 + 4  # output and loss both alive


@MODES
def test_views_count_once_and_frees_are_recorded(fake):
    with _mode(fake):
        trace = MemTrace()
        with trace:
            base = torch.empty(256)  # 1024
            views = [base[:10], base.view(16, 16).t(), base.unsqueeze(0)]
            del base
            assert trace.live_bytes == 1024
            del views
        assert trace.live_bytes == 0
        result = trace.result()
    assert [e.nbytes for e in result.events] == [1024, -1024]


@MODES
def test_empty_storages_are_no_allocations_and_replay(fake):
    """CUDA's gradient checkpointing makes empty tensors: the caching allocator gives them no block.
    An empty storage recorded as an allocation of 0 bytes read as a free, and its finalizer's free
    as a second one: the allocator replay refused the whole trace ("free of N, which is not
    allocated"), which is how every checkpointed case of the first GPU measurement failed."""
    from recipecli.fit.allocator import replay
    from recipecli.train.measure import _events

    with _mode(fake):
        trace = MemTrace()
        with trace:
            empty = torch.empty(0)
            grown = torch.empty(0)
            torch.add(torch.ones(4), 1, out=grown)  # resized in place from nothing: 16 bytes
            shrunk = torch.ones(8)
            shrunk.resize_(0)  # its storage keeps its bytes: resize_ never shrinks one
            emptied = torch.ones(8)
            emptied.untyped_storage().resize_(0)  # as FSDP frees a shard: the block goes
            torch.ops.aten.alias(emptied)
            del empty, grown, shrunk, emptied
        result = trace.result()
    assert all(e.nbytes != 0 for e in result.events)
    assert result.end_bytes == 0 and result.peak_bytes == 16 + 32 + 32  # grown, shrunk, emptied
    assert replay(_events(result)).fixed.allocated_bytes > 0


def test_untagged_storages_are_activations_when_alive_at_backward():
    events = [Event(0, 100, "forward"), Event(1, 10, "forward"), Event(1, -10, "forward"),
              Event(2, 50, "backward"), Event(0, -100, "backward")]
    result = summarize(events, {}, ["load", "forward", "backward"])
    assert result.peak_bytes == 150
    assert result.breakdown[ACTIVATIONS] == 100
    assert result.breakdown[TEMPORARIES] == 50
    assert result.end_bytes == 50


def test_paged_storages_are_counted_apart_from_the_allocator():
    """Paged optimizer state lives in unified memory: out of the peak, the breakdown and the events."""
    events = [Event(0, 100, "forward"), Event(1, 40, "optimizer"), Event(2, 30, "optimizer"), Event(0, -100, "optimizer")]
    result = summarize(events, {1: PAGED}, ["load", "forward", "optimizer"])
    assert result.peak_bytes == 130 and result.paged_bytes == 40
    assert sum(result.breakdown.values()) == 130 and PAGED not in result.breakdown
    assert all(e.storage != 1 for e in result.events)
