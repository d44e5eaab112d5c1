"""torchao float8 siblings (q, k, v of one normalised x) decided and run as one group: x pruned, quantized and
compressed once, each member's FP8 GEMM on its own e4m3 weight; outputs, reasons, gradients and the dense fallback
exactly those of the members run alone. And a float8 layer's folded producer: applied on load, or written out first
where that measures faster. On the CPU through a toy float8 path that runs the simulate numerics and
claims to be fast (the CUTLASS FP8 path runs the same on the GPU: tests/test_gpu_float8.py)."""

import pytest
import torch
import torch.nn as nn
from sparse_op import plan
from test_float8 import float8, inner

import lynx_compile
from lynx_compile.fp8 import float8_linear_ref
from lynx_compile.method import Method
from lynx_compile.ops import float8_sparse_linear_group_args
from lynx_compile.paths import PATHS, register_path
from lynx_compile.paths.measurements import clear_measurements
from lynx_compile.paths.simulate_float8 import SimulateFloat8

SPARSE = {"execution": "sparse"}


class ToyFloat8(SimulateFloat8):
    """A float8 path measured on the CPU (as fast as `speed` says) that runs groups member by member."""

    name = "toy_float8"
    execution = "sparse"
    measured = True
    groups = True
    times_written = True  # its `tune` prices a producer written out first itself
    speed = {"single": 1e9, "group": 1e9, "written": 1e6}  # written out first: slower than on load, unless set
    tuned: list = []

    def runs_on(self, device):
        return device.type == "cpu"

    def tune(self, workload, timer):
        self.tuned.append(workload.members)
        ms = timer(lambda: None)
        if workload.out_splits:
            return {"members": [{"variant": 3}] * len(workload.out_splits)}, ms / self.speed["group"]
        return {"variant": 3}, ms / self.speed["written" if workload.written else "single"]


@pytest.fixture
def toy_float8(tmp_path, monkeypatch):
    monkeypatch.setenv("LYNX_CACHE_DIR", str(tmp_path))
    path = register_path(ToyFloat8())
    ToyFloat8.speed.update(single=1e9, group=1e9, written=1e6)
    ToyFloat8.tuned.clear()
    clear_measurements()
    yield path
    del PATHS["toy_float8"]
    clear_measurements()


class Attention(nn.Module):
    """q, k, v of one normalised input, torchao float8 (v without bias), a plain output projection."""

    def __init__(self, dim=128):
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(dim)
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, 256), nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.to(torch.bfloat16)
        for layer in (self.to_q, self.to_k, self.to_v):
            float8(layer)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        return self.to_out(v * (q * k[..., :128]).sum(-1, keepdim=True).sigmoid())


def members_alone(module, x, method=Method()):
    """The block with each float8 member run alone with lynx's FP8 numerics (the plain to_out left dense: no
    plain sparse path runs on the CPU under execution="sparse")."""
    h = module.norm(x)
    q, k, v = (float8_linear_ref(h, *inner(layer), layer.bias, method) for layer in (module.to_q, module.to_k,
                                                                                     module.to_v))  # fmt: skip
    return module.to_out(v * (q * k[..., :128]).sum(-1, keepdim=True).sigmoid())


def test_float8_siblings_are_decided_and_run_as_one_group(toy_float8):
    module, x = Attention().eval(), torch.randn(2, 40, 128, dtype=torch.bfloat16)
    report = lynx_compile.explain(module, x, options=SPARSE)
    layers = {layer.name: layer for layer in report.layers}
    for name in ("to_q", "to_k", "to_v"):
        assert layers[name].decision == "sparse" and layers[name].siblings == ("to_q", "to_k", "to_v")
        assert "sibling group of 3 (to_q, to_k, to_v): x pruned once for 3 GEMMs" in layers[name].reason
    assert layers["to_out"].decision == "dense" and layers["to_out"].siblings == ()
    assert (128, 256, 128) in ToyFloat8.tuned  # measured as one unit
    after = report.graphs[0].after
    assert after.count("lynx.float8_sparse_linear_group.default") == 1 and "float8_sparse_linear.default" not in after
    with torch.no_grad():
        out = torch.compile(module, backend="lynx", options=SPARSE)(x)
        torch.testing.assert_close(out.float(), members_alone(module, x).float(), rtol=2e-2, atol=2e-2)


def test_a_float8_group_that_does_not_pay_leaves_its_members_to_their_own_decisions(toy_float8):
    ToyFloat8.speed["group"] = 1e-9
    report = lynx_compile.explain(Attention().eval(), torch.randn(2, 40, 128, dtype=torch.bfloat16), options=SPARSE)
    float8_layers = [layer for layer in report.layers if layer.name != "to_out"]
    assert all(layer.decision == "sparse" and layer.siblings == () for layer in float8_layers)
    assert "float8_sparse_linear_group" not in report.graphs[0].after


def test_float8_and_plain_linears_on_one_x_do_not_group(toy_float8):
    module = Attention().eval()
    module.to_v = nn.Linear(128, 128, bias=False).to(torch.bfloat16)  # a plain sibling beside two float8 ones
    report = lynx_compile.explain(module, torch.randn(2, 40, 128, dtype=torch.bfloat16), options=SPARSE)
    layers = {layer.name: layer for layer in report.layers}
    assert layers["to_q"].siblings == ("to_q", "to_k") and layers["to_v"].siblings == ()


def test_float8_group_gradients_reach_x_and_the_biases(toy_float8):
    module = Attention()
    x = torch.randn(2, 40, 128, dtype=torch.bfloat16, requires_grad=True)
    out = torch.compile(module, backend="lynx", options={**SPARSE, "compiler": "eager"})(x)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert module.to_q.bias.grad is not None and module.to_k.bias.grad is not None


@pytest.mark.parametrize("min_tokens", [0, 1000])
def test_the_float8_group_op_equals_its_members_alone(min_tokens):
    """Past min_tokens the group runs the simulate numerics of each member; below, rowwise FP8 dense of each."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 20, 128, generator=g).to(torch.bfloat16)
    layers = [float8(nn.Linear(128, n).to(torch.bfloat16)) for n in (64, 32)]
    biases = [layers[0].bias.detach(), None]
    weights, scales = [layer.weight.qdata for layer in layers], [layer.weight.scale for layer in layers]
    args = float8_sparse_linear_group_args([x], weights, scales, biases, plan("simulate_float8",
                                                                                  min_tokens=min_tokens))
    outs = torch.ops.lynx.float8_sparse_linear_group(*args)
    method = Method() if min_tokens == 0 else None  # below min_tokens: no pruning, rowwise FP8 dense
    for out, layer, bias in zip(outs, layers, biases):
        expected = float8_linear_ref(x, *inner(layer), bias, method)
        torch.testing.assert_close(out.float(), expected.float(), rtol=1e-2, atol=1e-2)
    # (opcheck's schema test multiplies the inputs, which torch does not do for e4m3 on the CPU)
    torch.library.opcheck(torch.ops.lynx.float8_sparse_linear_group.default, args, test_utils="test_faketensor")


class FeedForward(nn.Module):
    def __init__(self, dim=128, hidden=256):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.to(torch.bfloat16)
        float8(self.up), float8(self.down)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x), approximate="tanh"))


@pytest.mark.parametrize("written_faster", [True, False])
def test_a_float8_layers_producer_is_folded_or_written_out_as_measured_faster(toy_float8, written_faster):
    """The down-projection's GELU is measured both ways; the faster decides whether the op applies it on load or
    Inductor writes x first. Either way the numerics are lynx's FP8 numerics of gelu(up(x))."""
    ToyFloat8.speed["written"] = 1e12 if written_faster else 1e6
    module, x = FeedForward().eval(), torch.randn(2, 40, 128, dtype=torch.bfloat16)
    report = lynx_compile.explain(module, x, options=SPARSE)
    down = next(layer for layer in report.layers if layer.name == "down")
    assert down.decision == "sparse"
    if written_faster:
        assert "input gelu_tanh written out first" in down.reason and "folded" not in down.reason, down.reason
    else:
        assert "input gelu_tanh pruned on load" in down.reason and "folded into the op" in down.reason, down.reason
    after = report.graphs[0].after
    assert ("_nn.gelu" in after) == written_faster and after.count("lynx.float8_sparse_linear.default") == 2
    with torch.no_grad():
        out = torch.compile(module, backend="lynx", options=SPARSE)(x)
        hidden = float8_linear_ref(x, *inner(module.up), module.up.bias, Method())
        hidden = torch.nn.functional.gelu(hidden, approximate="tanh")
        expected = float8_linear_ref(hidden, *inner(module.down), module.down.bias, Method())
    torch.testing.assert_close(out.float(), expected.float(), rtol=3e-2, atol=3e-2)  # bf16 roundings apart
