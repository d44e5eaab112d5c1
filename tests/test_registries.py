"""The two seams: a sparse path and a producer fold are each one class plus one registry line, and everything else
— the decision, the op, the lowering, the reasons, the cache identity, stored measurements — follows."""

import json
import operator
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_op import sparse_linear

import lynx_compile
from lynx_compile.folds import FOLDS, FoldMatch, FoldSpec, ProducerFold, compress, register_fold
from lynx_compile.folds.base import through_identities
from lynx_compile.kernels.cusparselt_layout import prune_compress_24_ref
from lynx_compile.kernels.prune_compress_24 import Loader, as_flat
from lynx_compile.method import Method, sparse_linear_ref
from lynx_compile.passes.lower_sparse_linears import source_files
from lynx_compile.paths import PATHS, SparsePath, clear_measurements, register_path

try:
    import triton
    import triton.language as tl

    from lynx_compile.kernels.prune_compress_24 import load_tile
except ImportError:  # pragma: no cover - triton ships for Linux only
    triton = None


# ---- a sparse path of our own -------------------------------------------------------------------------------------


class ToyPath(SparsePath):
    """Runs on the CPU with the simulate numerics; claims to be fast (`speed`: dense time / its time); refuses
    K < 32; runs sibling groups member by member (the base class's `forward_group`)."""

    name = "toy"
    groups = True
    calls = {"tune": 0, "forward": 0, "lower": 0, "groups": 0, "lower_group": 0}
    speed = {"single": 1e9, "group": 1e9}

    def runs_on(self, device):
        return device.type == "cpu"

    def unavailable_reason(self, workload, method):
        return None if workload.in_features >= 32 else f"K={workload.in_features} < 32 (toy rule)"

    def tune(self, workload, timer):
        self.calls["tune"] += 1
        inputs, weight, _ = workload.example()
        dense = timer(lambda: F.linear(inputs[0], weight))
        if workload.out_splits:
            self.calls["groups"] += 1
            return {"members": [{"variant": 7}] * len(workload.out_splits)}, dense / self.speed["group"]
        return {"variant": 7}, dense / self.speed["single"]

    def forward(self, inputs, weight, bias, lora, plan):
        self.calls["forward"] += 1
        return PATHS["simulate"].forward(inputs, weight, bias, lora, plan)

    def lower(self, inputs, weight, bias, lora, plan):
        self.calls["lower"] += 1
        return self.forward(inputs, weight, bias, lora, plan)

    def lower_group(self, inputs, weights, biases, plan):
        self.calls["lower_group"] += 1
        return self.forward_group(inputs, weights, biases, plan)


@pytest.fixture
def toy_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LYNX_CACHE_DIR", str(tmp_path))  # measured afresh in every test
    path = register_path(ToyPath())
    ToyPath.calls.update(tune=0, forward=0, lower=0, groups=0, lower_group=0)
    ToyPath.speed.update(single=1e9, group=1e9)
    clear_measurements()
    yield path
    del PATHS["toy"]
    clear_measurements()


def model():
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16)).eval()


def test_a_registered_path_is_chosen_measured_and_run(toy_path):
    layers, x = model(), torch.randn(2, 12, 16)
    options = {"execution": "sparse"}
    report = lynx_compile.explain(layers, x, options=options)
    first, second = report.layers
    assert first.decision == "dense" and first.reason.endswith("; toy: K=16 < 32 (toy rule)"), first.reason
    assert first.reason.startswith("cusparselt: ")  # every path says why not, by name
    assert second.decision == "sparse" and second.path == "toy" and "measured" in second.reason
    assert '"variant":7' in report.graphs[0].after  # the path's settings reach the op's plan
    assert ToyPath.calls["tune"] == 1

    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):  # a cache hit would skip the lowering
        out = torch.compile(layers, backend="lynx", options=options)(x)
    assert ToyPath.calls["lower"] == 1 and ToyPath.calls["tune"] == 1  # lowered by the path; measured once
    expected = sparse_linear_ref(F.gelu(layers[0](x)), layers[2].weight, layers[2].bias, Method())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_stored_measurements_are_taken_instead_of_timing(toy_path):
    layers, x = model(), torch.randn(2, 12, 16)
    lynx_compile.explain(layers, x, options={"execution": "sparse"})
    stored = lynx_compile.measured()
    (key,) = [key for key in stored if key.startswith("toy |")]
    policy = lynx_compile.Policy({"0": lynx_compile.LayerPolicy("sparse", "x"), "2": lynx_compile.LayerPolicy(
        "sparse", "x")}).with_measurements(stored)  # fmt: skip
    assert lynx_compile.Policy.from_json(policy.to_json()).measurements == policy.measurements

    clear_measurements()
    ToyPath.calls["tune"] = 0
    report = lynx_compile.explain(layers, x, options={"execution": "sparse", "policy": policy})
    assert ToyPath.calls["tune"] == 0 and report.layers[1].path == "toy"


def test_measurements_persist_on_disk_for_the_next_process(toy_path, monkeypatch):
    from lynx_compile.paths import measurements

    layers, x = model(), torch.randn(2, 12, 16)
    lynx_compile.explain(layers, x, options={"execution": "sparse"})
    assert ToyPath.calls["tune"] == 1 and measurements.disk_cache_path().exists()

    clear_measurements()  # as a new process starts
    report = lynx_compile.explain(layers, x, options={"execution": "sparse"})
    assert ToyPath.calls["tune"] == 1 and report.layers[1].path == "toy"  # read back, not timed

    clear_measurements()
    monkeypatch.setattr(measurements, "device_fingerprint", lambda device: "another GPU")
    lynx_compile.explain(layers, x, options={"execution": "sparse"})
    assert ToyPath.calls["tune"] == 2  # other hardware or versions: timed again

    measurements.disk_cache_path().write_text("{not json")
    clear_measurements()
    lynx_compile.explain(layers, x, options={"execution": "sparse"})  # a damaged cache is re-measured, not fatal
    assert ToyPath.calls["tune"] == 3

    # records of the wrong shape, or a zero time (which divided by zero and cost the graph lynx), are measured again
    cache = measurements.disk_cache_path()
    cache.write_text(json.dumps({key: {**record, "sparse_ms": 0} if index % 2 else {"stale": True}
                                 for index, (key, record) in enumerate(json.loads(cache.read_text()).items())}))
    clear_measurements()
    report = lynx_compile.explain(layers, x, options={"execution": "sparse", "strict": True})
    assert ToyPath.calls["tune"] == 4 and report.layers[1].path == "toy"
    assert all(record.get("sparse_ms", 0) > 0 for record in json.loads(cache.read_text()).values())


def test_the_cache_identity_covers_every_registered_path(toy_path):
    assert any(file.endswith("tests/test_registries.py") for file in source_files())
    assert all(file.endswith(".py") for file in source_files())


# ---- a producer fold of our own -----------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _load_negated(operands, strides, scalars, rows, start, M, ARGS: tl.constexpr, WIDTH: tl.constexpr):
        x = load_tile(operands[0], strides[0], strides[1], rows, start, M, WIDTH)
        return (-x.to(tl.float32)).to(x.dtype)  # through fp32: the interpreter negates bf16's raw bits


class Negate(ProducerFold):
    """x = −t: matched on `-t`, applied by the compressor on load."""

    kind = "negate"

    def match(self, x):
        skipped, produced = through_identities(x)
        if produced.op != "call_function" or produced.target not in (operator.neg, torch.neg):
            return None
        if len(produced.users) != 1:
            return None
        return FoldMatch(FoldSpec(self.kind), [produced.args[0]], [*skipped, produced])

    def reference(self, inputs, params):
        return -inputs[0]

    def vjp(self, grad_x, inputs, params):
        return [-grad_x]

    def loader(self, inputs, params):
        return Loader(_load_negated, inputs[0].shape[-1])

    def width(self, inputs, params):
        return inputs[0].shape[-1]


@pytest.fixture
def negate_fold():
    fold = register_fold(Negate())
    yield fold
    del FOLDS["negate"]


def test_a_registered_fold_is_applied_by_the_compressor(negate_fold):
    t = torch.randn(40, 128, dtype=torch.bfloat16)
    operand, scale = compress([t], FoldSpec("negate"))
    expected, expected_scale = prune_compress_24_ref(-t)
    assert torch.equal(as_flat(operand, 40, 128).view(torch.int16), expected.view(torch.int16))
    torch.testing.assert_close(scale, expected_scale, rtol=1e-5, atol=0)


class NegatedInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x):
        return self.down(-self.up(x))


def test_a_registered_fold_is_matched_folded_and_differentiated(negate_fold):
    module, x = NegatedInput(), torch.randn(2, 12, 32, requires_grad=True)
    report = lynx_compile.explain(module, x.detach(), options={"execution": "simulate"})
    down = next(layer for layer in report.layers if layer.name == "down")
    assert "input negate() folded into the op" in down.reason
    assert "target=operator.neg" in report.graphs[0].before and "target=operator.neg" not in report.graphs[0].after

    compiled = torch.compile(module, backend="lynx", options={"execution": "simulate", "compiler": "eager"})
    out = compiled(x)
    # the op on the written-out −t: the same forward, and the same straight-through gradient (masks and scales held)
    expected = sparse_linear(-sparse_linear(x, module.up.weight, module.up.bias), module.down.weight, module.down.bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, sparse_linear_ref(-sparse_linear_ref(x, module.up.weight, module.up.bias, Method()),
                               module.down.weight, module.down.bias, Method()), rtol=1e-5, atol=1e-5)  # fmt: skip
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_the_measurement_cache_is_written_with_the_modes_open_gives(toy_path):
    from lynx_compile.paths import measurements

    old = os.umask(0o022)
    try:
        lynx_compile.explain(model(), torch.randn(2, 12, 16), options={"execution": "sparse"})
    finally:
        os.umask(old)
    assert measurements.disk_cache_path().stat().st_mode & 0o777 == 0o644
