"""Producer folds beyond GELU: SiLU, and the gated activations of SwiGLU / GEGLU feed-forwards (act(a) · b)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sparse_op import sparse_linear, sparse_linear_call

import lynx_compile
from lynx_compile.folds import FoldSpec, assemble, compress, load
from lynx_compile.kernels.activations import activate, activation_ref
from lynx_compile.kernels.cusparselt_layout import prune_compress_24_ref
from lynx_compile.kernels.prune_compress_24 import as_flat
from lynx_compile.method import Method, sparse_linear_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@settings(max_examples=20)
@given(st.integers(1, 70), st.integers(1, 3), st.sampled_from(["silu", "gelu", "gelu_tanh"]),
       st.sampled_from([torch.bfloat16, torch.float16]), st.booleans(), st.integers(0, 2**31 - 1))
def test_gated_fold_on_load_equals_the_written_out_product(rows, k_tiles, name, dtype, chunked, seed):
    """act(a)·b made on load == the compressor on that product written out by the same loader; and that product is
    torch's act(a)·b to one rounding step of the dtype (the interpreter rounds bf16 toward zero, a GPU to nearest)."""
    g = torch.Generator().manual_seed(seed)
    k = 64 * k_tiles
    if chunked:  # one projection split in two: views with a row stride of 2K, as `proj(x).chunk(2, -1)` gives
        a, b = torch.randn(rows, 2 * k, generator=g).to(dtype=dtype, device=DEVICE).chunk(2, dim=-1)
    else:
        a, b = (torch.randn(rows, k, generator=g).to(dtype=dtype, device=DEVICE) for _ in range(2))
    spec = FoldSpec("gated", (name,))
    operand, scale = compress([a, b], spec)
    written = load([a, b], spec)
    expected, expected_scale = prune_compress_24_ref(written)
    assert torch.equal(as_flat(operand, rows, k).view(torch.int16), expected.view(torch.int16))
    torch.testing.assert_close(scale, expected_scale, rtol=1e-5, atol=0)
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    torch.testing.assert_close(written.float(), assemble([a, b], spec).float(), rtol=2 * ulp, atol=1e-5)


@given(st.integers(1, 40), st.sampled_from([torch.bfloat16, torch.float16]))
def test_silu_on_load_is_torchs_to_one_rounding(rows, dtype):
    x = (torch.randn(rows, 64) * 4).to(dtype=dtype, device=DEVICE)
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    torch.testing.assert_close(activate(x, "silu").float(), activation_ref(x, "silu").float(), rtol=ulp, atol=1e-6)


class SwiGLU(nn.Module):
    """Z-Image's feed-forward, w2(silu(w1(x)) · w3(x)), or diffusers' GEGLU, proj(x).chunk(2) → h · gelu(gate)."""

    def __init__(self, dim=64, hidden=128, chunked=False):
        super().__init__()
        self.chunked = chunked
        if chunked:
            self.proj = nn.Linear(dim, 2 * hidden)
        else:
            self.w1, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        if self.chunked:
            h, gate = self.proj(x).chunk(2, dim=-1)
            return self.w2(h * F.gelu(gate, approximate="tanh"))
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


@pytest.mark.parametrize("chunked", [False, True], ids=["w1-w3", "chunk"])
def test_a_gated_feed_forward_folds_into_its_down_projection(chunked):
    module, x = SwiGLU(chunked=chunked).eval(), torch.randn(2, 12, 64)
    report = lynx_compile.explain(module, x, options={"execution": "simulate"})
    down = next(layer for layer in report.layers if layer.name == "w2")
    name = "gelu_tanh" if chunked else "silu"
    assert f"input {name}(a)·b folded into the op" in down.reason, down.reason
    assert "silu" not in report.graphs[0].after.replace("gated(silu)", "") and " mul" not in report.graphs[0].after

    def simulated(x, layer):
        return sparse_linear_ref(x, layer.weight, layer.bias, Method())

    if chunked:
        h, gate = simulated(x, module.proj).chunk(2, dim=-1)
        expected = simulated(h * F.gelu(gate, approximate="tanh"), module.w2)
    else:
        expected = simulated(F.silu(simulated(x, module.w1)) * simulated(x, module.w3), module.w2)
    with torch.no_grad():
        out = torch.compile(module, backend="lynx", options={"execution": "simulate"})(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["silu", "gelu"])
def test_gated_op_forward_and_gradients_are_those_of_the_written_out_input(name):
    g = torch.Generator().manual_seed(5)
    a, b = (torch.randn(2, 12, 64, generator=g, requires_grad=True) for _ in range(2))
    weight = (torch.randn(16, 64, generator=g) / 8).requires_grad_()
    folded = sparse_linear([a, b], weight, fold=f"gated({name})")
    plain = sparse_linear(activation_ref(a, name) * b, weight)
    torch.testing.assert_close(folded, plain, rtol=0, atol=0)
    grad_out = torch.randn_like(plain)
    for actual, want in zip(torch.autograd.grad(folded, (a, b, weight), grad_out),
                            torch.autograd.grad(plain, (a, b, weight), grad_out)):  # fmt: skip
        torch.testing.assert_close(actual, want, rtol=1e-5, atol=1e-6)
    torch.library.opcheck(torch.ops.lynx.sparse_linear.default,
                          sparse_linear_call([a, b], weight, fold=f"gated({name})"))  # fmt: skip


def test_gated_inputs_of_different_shapes_are_a_clear_error():
    with pytest.raises(ValueError, match="match in shape"):
        sparse_linear([torch.randn(4, 64), torch.randn(4, 32)], torch.randn(8, 64), fold="gated(silu)")
