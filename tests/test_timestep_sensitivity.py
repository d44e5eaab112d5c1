"""benchmarks/timestep_sensitivity.py's step schedule: a layer runs sparse exactly at its steps, whoever calls it."""

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from timestep_sensitivity import layer_kind, scheduled, span, sparse_flop_share, steps_in  # noqa: E402

from lynx_compile.eager import sparse_output  # noqa: E402
from lynx_compile.method import Method  # noqa: E402


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(8, 8)
        self.second = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def run_steps(model, x, steps):
    """One model call per step, each on the previous output, as a sampler's loop does."""
    outs = []
    for _ in range(steps):
        x = model(x)
        outs.append(x)
    return outs


def test_each_layer_sparse_only_at_its_steps():
    model, method = TwoLayers(), Method()
    x = torch.randn(32, 8)
    schedule = {"first": frozenset({1}), "second": frozenset({0, 2})}
    with scheduled(model, method, schedule):
        outs = run_steps(model, x, 3)
    with torch.no_grad():
        expected, inputs = [], x
        for step in range(3):
            hidden = model.first(inputs)
            if step in schedule["first"]:
                hidden = sparse_output(model.first, inputs, method, None)
            hidden = torch.relu(hidden)
            if step in schedule["second"]:
                out = sparse_output(model.second, hidden, method, None)
            else:
                out = model.second(hidden)
            expected.append(out)
            inputs = out
    for step, (out, want) in enumerate(zip(outs, expected)):
        torch.testing.assert_close(out, want, rtol=0, atol=0, msg=f"step {step}")


def test_steps_restart_and_hooks_leave():
    model, method = TwoLayers(), Method()
    x = torch.randn(32, 8)
    for _ in range(2):  # a second block counts from step 0 again
        with scheduled(model, method, {"first": steps_in(1, 2), "second": steps_in(1, 2)}):
            first, second = run_steps(model, x, 2)
        with torch.no_grad():
            assert torch.equal(first, model(x))  # step 0: dense
            assert not torch.equal(second, model(first))  # step 1: sparse
    assert not model.first._forward_hooks and not model._forward_pre_hooks


def test_sparse_flop_share_counts_steps_within_the_run():
    shares = {"a": 0.6, "b": 0.4}
    assert sparse_flop_share(shares, {"a": steps_in(0, 25)}, 25) == pytest.approx(0.6)
    mixed = {"a": steps_in(10, 25), "b": steps_in(0, 5)}
    assert sparse_flop_share(shares, mixed, 25) == pytest.approx(0.6 * 15 / 25 + 0.4 * 5 / 25)
    assert sparse_flop_share(shares, {"b": steps_in(20, 40)}, 25) == pytest.approx(0.4 * 5 / 25)


def test_layer_kind_stars_the_block_index():
    assert layer_kind("transformer_blocks.3.attn1.to_q") == "transformer_blocks.*.attn1.to_q"
    assert layer_kind("proj_out_1") == "proj_out_1"


def test_span_parses_start_stop():
    assert span("10:20") == (10, 20)
    with pytest.raises(argparse.ArgumentTypeError):
        span("20:10")
