"""The norm fold (`folds/norm.py`): LayerNorm / RMSNorm and the adaLN modulation before q/k/v and the MLP's
up-projection, made by the compressor on load from t, its row statistics and the modulation."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from sparse_op import sparse_linear, sparse_linear_call
from test_registries import toy_path  # noqa: F401  (the fixture registers the toy path)

import lynx_compile
from lynx_compile.folds import FoldSpec, assemble, compress, compress_cutlass, load
from lynx_compile.folds.norm import Norm
from lynx_compile.kernels.cusparselt_layout import prune_compress_24_ref
from lynx_compile.kernels.prune_compress_24 import as_flat, prune_compress_24_cutlass
from lynx_compile.method import Method, sparse_linear_ref

def statistics(t: torch.Tensor, kind: str, eps: float = 1e-6) -> list[torch.Tensor]:
    """mean and rstd as the rewrite's nodes compute them (fp32, one per row)."""
    tf = t.float()
    if kind == "layer":
        var, mean = torch.var_mean(tf, dim=-1, keepdim=True, correction=0)
        return [mean, torch.rsqrt(var + eps)]
    return [torch.rsqrt((tf * tf).mean(-1, keepdim=True) + eps)]


def norm_inputs(g, batch, tokens, k, dtype, kind, affine, scaled, shifted, per):
    """t (batch, tokens, k), its statistics, the norm's weight and bias, and a and c broadcast `per` sample, for all
    rows or per row."""
    t = (torch.randn(batch, tokens, k, generator=g) * 3 + 0.5).to(dtype)
    shape = {"sample": (batch, 1, k), "all": (k,), "row": (batch, tokens, k)}[per]
    extra = [torch.randn(k, generator=g) for _ in range({"none": 0, "w": 1, "wb": 2}[affine])]
    if scaled:
        extra.append((1 + 0.3 * torch.randn(shape, generator=g)).to(dtype))
    if shifted:
        extra.append(torch.randn(shape, generator=g).to(dtype))
    return [t, *statistics(t, kind), *extra]


@settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(st.integers(1, 3), st.integers(1, 40), st.sampled_from([64, 192]), st.sampled_from(["layer", "rms"]),
       st.sampled_from(["none", "w", "wb"]), st.sampled_from(["none", "a", "one_plus_a"]), st.booleans(),
       st.sampled_from(["sample", "all", "row"]), st.sampled_from([torch.bfloat16, torch.float16]),
       st.integers(0, 2**31 - 1))  # fmt: skip
def test_norm_on_load_equals_the_compressor_on_the_written_out_x(batch, tokens, k, kind, affine, scaled, shifted,
                                                                 per, dtype, seed):  # fmt: skip
    """Both compressor layouts on load == on the x the same loader writes out; that x is the fold's torch
    reference to one rounding step (the interpreter rounds bf16 toward zero, and multiplies and adds apart)."""
    if kind == "rms" and affine == "wb":
        affine = "w"
    g = torch.Generator().manual_seed(seed)
    inputs = norm_inputs(g, batch, tokens, k, dtype, kind, affine, scaled != "none", shifted, per)
    spec = FoldSpec("norm", (kind, affine, scaled, "c" if shifted else "none"))
    rows = batch * tokens
    written = load(inputs, spec)
    operand, scale = compress(inputs, spec)
    expected, expected_scale = prune_compress_24_ref(written)
    assert torch.equal(as_flat(operand, rows, k).view(torch.int16), expected.view(torch.int16))
    torch.testing.assert_close(scale, expected_scale, rtol=1e-5, atol=0)
    values, metadata, _ = compress_cutlass(inputs, spec)
    want_values, want_metadata, _ = prune_compress_24_cutlass(written)
    assert torch.equal(values.view(torch.int16), want_values.view(torch.int16)) and torch.equal(metadata, want_metadata)
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    reference = assemble(inputs, spec).reshape(rows, k).float()
    torch.testing.assert_close(written.float(), reference, rtol=2 * ulp, atol=1e-3)


class ModulatedBlock(nn.Module):
    """FLUX's double block in small: adaLN-modulated norms before q/k/v (a sibling group) and the MLP's up."""

    def __init__(self, dim=64):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.up, self.modulation = nn.Linear(dim, 4 * dim), nn.Linear(dim, 4 * dim)

    def forward(self, x, emb):
        shift, scale, shift2, scale2 = self.modulation(F.silu(emb)).chunk(4, dim=1)
        h = self.norm1(x) * (1 + scale[:, None]) + shift[:, None]
        x = x + self.to_q(h) * self.to_k(h).sigmoid() + self.to_v(h)
        return self.up(self.norm2(x) * (1 + scale2[:, None]) + shift2[:, None])


class Float32Norms(nn.Module):
    """Wan's block in small: norm and modulation in fp32, cast back; an affine norm before the cross-attention's q;
    and an RMSNorm times a scale (Z-Image)."""

    def __init__(self, dim=64):
        super().__init__()
        self.table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.ffn, self.q, self.out = nn.Linear(dim, 2 * dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.rms_weight = nn.Parameter(1 + 0.1 * torch.randn(dim))

    def forward(self, x, temb, gain):
        shift, scale = (self.table + temb.float()).chunk(2, dim=1)
        h = (F.layer_norm(x.float(), (x.shape[-1],), None, None, 1e-6) * (1 + scale) + shift).type_as(x)
        norm2 = self.norm2  # Wan's FP32LayerNorm: its parameters cast to fp32 too
        cross = F.layer_norm(x.float(), (x.shape[-1],), norm2.weight.float(), norm2.bias.float(), 1e-6).type_as(x)
        return self.ffn(h), self.q(cross), self.out(F.rms_norm(x, (x.shape[-1],), self.rms_weight, 1e-6) * gain)


def simulated(x, layer):
    return sparse_linear_ref(x, layer.weight, layer.bias, Method())


def test_modulated_norms_fold_into_a_single_layer_and_into_a_sibling_group(toy_path):
    torch.manual_seed(0)
    block, x, emb = ModulatedBlock().eval(), torch.randn(2, 12, 64), torch.randn(2, 64)
    options = {"execution": "sparse", "min_tokens": 1}
    report = lynx_compile.explain(block, x, emb, options=options)
    layers = {layer.name: layer for layer in report.layers}
    assert "input layer_norm·(1+a)+c pruned on load" in layers["up"].reason, layers["up"].reason
    for name in ("to_q", "to_k", "to_v"):
        assert layers[name].siblings == ("to_q", "to_k", "to_v"), layers[name]
        assert "input layer_norm·(1+a)+c pruned on load" in layers[name].reason, layers[name].reason
    after = report.graphs[0].after
    assert "layer_norm" not in after and "var_mean" in after  # x never made; its row statistics are
    with torch.no_grad():
        out = torch.compile(block, backend="lynx", options=options)(x, emb)
        shift, scale, shift2, scale2 = simulated(F.silu(emb), block.modulation).chunk(4, dim=1)
        h = block.norm1(x) * (1 + scale[:, None]) + shift[:, None]
        y = x + simulated(h, block.to_q) * simulated(h, block.to_k).sigmoid() + simulated(h, block.to_v)
        expected = simulated(block.norm2(y) * (1 + scale2[:, None]) + shift2[:, None], block.up)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_a_norm_read_by_another_consumer_is_not_folded(toy_path):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.a, self.b = nn.LayerNorm(64), nn.Linear(64, 64), nn.Linear(64, 64)

        def forward(self, x):
            h = self.norm(x)
            return self.a(h) + self.b(h) + h  # h has a reader besides the two linears

    report = lynx_compile.explain(Shared().eval(), torch.randn(2, 12, 64),
                                  options={"execution": "sparse", "min_tokens": 1})  # fmt: skip
    assert all("layer_norm" not in layer.reason for layer in report.layers), [l.reason for l in report.layers]
    assert "layer_norm" in report.graphs[0].after


class NormAfterLinear(nn.Module):
    """Chroma's guidance MLP and PRX's input projection in small: a norm reads a linear's output straight, then feeds
    one linear (an RMSNorm) and a sibling group (a modulated LayerNorm)."""

    def __init__(self, dim=64):
        super().__init__()
        self.inp, self.mid = nn.Linear(32, dim), nn.Linear(dim, dim)
        self.rms, self.layer = nn.RMSNorm(dim, eps=1e-6), nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.to_q, self.to_k = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x, scale):
        h = self.mid(self.rms(self.inp(x)))
        g = self.layer(h) * (1 + scale[:, None])
        return self.to_q(g) + self.to_k(g).sigmoid()


def test_a_norm_straight_after_a_sparse_linear_folds_and_reads_its_replacement(toy_path):
    """The norm's row statistics read the linear before it, which the rewrite replaces (and erases) first: they must
    read its replacement (once, a graph that failed lint ran without lynx)."""
    torch.manual_seed(2)
    module, x, scale = NormAfterLinear().eval(), torch.randn(2, 12, 32), torch.randn(2, 64)
    options = {"execution": "sparse", "min_tokens": 1, "strict": True}  # the toy path: sibling groups
    report = lynx_compile.explain(module, x, scale, options=options)
    reasons = {layer.name: layer.reason for layer in report.layers}
    assert all(layer.decision == "sparse" for layer in report.layers) and len(reasons) == 4, reasons
    assert "input rms_norm(affine) pruned on load" in reasons["mid"], reasons
    assert "input layer_norm·(1+a) pruned on load" in reasons["to_q"], reasons
    with torch.no_grad():
        out = torch.compile(module, backend="lynx", options=options)(x, scale)
        h = simulated(module.rms(simulated(x, module.inp)), module.mid)
        g = module.layer(h) * (1 + scale[:, None])
        expected = simulated(g, module.to_q) + simulated(g, module.to_k).sigmoid()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


class BiasOnlyNorm(nn.Module):
    """A layer norm with a bias and no weight before a linear: no affine kind of the fold loads a bias alone."""

    def __init__(self, dim=64):
        super().__init__()
        self.shift, self.fc = nn.Parameter(0.1 * torch.randn(dim)), nn.Linear(dim, dim)

    def forward(self, t):
        return self.fc(F.layer_norm(t, (t.shape[-1],), None, self.shift))


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_a_norm_with_a_bias_and_no_weight_is_not_folded_and_matches_eager(compiler):
    torch.manual_seed(3)
    module, t = BiasOnlyNorm().eval(), torch.randn(2, 12, 64)
    options = {"execution": "simulate", "min_tokens": 1, "compiler": compiler, "strict": True}
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        out = torch.compile(module, backend="lynx", options=options)(t)
    assert [layer.decision for layer in report.layers] == ["sparse"]
    assert "folded" not in report.layers[0].reason, report.layers[0].reason
    expected = simulated(F.layer_norm(t, (64,), None, module.shift), module.fc)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


class DefaultEpsRmsNorm(nn.Module):
    def __init__(self, dim=64):
        super().__init__()
        self.norm, self.fc = nn.RMSNorm(dim), nn.Linear(dim, dim)  # eps None: torch's default

    def forward(self, t):
        return self.fc(self.norm(t))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_an_rms_norm_with_the_default_eps_folds_with_torchs(dtype):
    """torch's rms_norm without eps takes the epsilon of the type it computes in: fp32's for 16-bit inputs, not the
    inputs' own (7.8e-3 for bf16, which on small activations changed x by half)."""
    torch.manual_seed(0)
    module, t = DefaultEpsRmsNorm().to(dtype).eval(), (0.05 * torch.randn(2, 12, 64)).to(dtype)
    options = {"execution": "simulate", "min_tokens": 1, "compiler": "eager"}
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        out = torch.compile(module, backend="lynx", options=options)(t)
        expected = simulated(module.norm(t), module.fc)
    assert "rms_norm(affine) folded" in report.layers[0].reason, report.layers[0].reason
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_a_fold_whose_match_its_op_would_refuse_leaves_x_as_it_is(monkeypatch):
    """A matcher's slip (inputs its op's `check` refuses) must leave x unfolded, not fail in the compiled model."""

    def slipped(self, x):  # one input short of what the norm's op takes
        found = real_match(self, x)
        if found is not None:
            found.inputs = found.inputs[:-1]
        return found

    real_match = Norm.match
    monkeypatch.setattr(Norm, "match", slipped)
    module, x = NormAfterLinear().eval(), torch.randn(2, 12, 32)
    options = {"execution": "simulate", "min_tokens": 1, "strict": True}
    report = lynx_compile.explain(module, x, torch.randn(2, 64), options=options)
    assert all("rms_norm" not in layer.reason and "layer_norm" not in layer.reason for layer in report.layers)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wan_and_z_image_norms_fold_with_their_casts_and_match_eager(dtype):
    torch.manual_seed(1)
    module = Float32Norms().eval().to(dtype)
    module.table.data = module.table.data.float()
    x, temb, gain = torch.randn(2, 12, 64).to(dtype), torch.randn(2, 2, 64), (1 + torch.randn(2, 1, 64)).to(dtype)
    options = {"execution": "simulate", "min_tokens": 1}
    report = lynx_compile.explain(module, x, temb, gain, options=options)
    reasons = {layer.name: layer.reason for layer in report.layers}
    assert "input layer_norm·(1+a)+c folded" in reasons["ffn"], reasons
    assert "input layer_norm(affine) folded" in reasons["q"], reasons
    assert "input rms_norm(affine)·a folded" in reasons["out"], reasons
    with torch.no_grad():
        outs = torch.compile(module, backend="lynx", options=options)(x, temb, gain)
        shift, scale = (module.table + temb.float()).chunk(2, dim=1)
        h = (F.layer_norm(x.float(), (64,), None, None, 1e-6) * (1 + scale) + shift).type_as(x)
        norm2 = module.norm2
        cross = F.layer_norm(x.float(), (64,), norm2.weight.float(), norm2.bias.float(), 1e-6).type_as(x)
        rms = F.rms_norm(x, (64,), module.rms_weight, 1e-6) * gain
        expected = [simulated(h, module.ffn), simulated(cross, module.q), simulated(rms, module.out)]
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2  # bf16: a statistic's last bit can flip a rounding
    for out, want in zip(outs, expected):
        assert ((out.float() - want.float()).norm() / want.float().norm()).item() < tolerance


@pytest.mark.parametrize("params", [("layer", "wb", "a", "c"), ("rms", "w", "none", "c")])
def test_norm_op_gradients_are_those_of_the_written_out_input(params):
    """The op's straight-through backward through the fold: the gradients of the torch reference (fp32), to t, the
    statistics, the norm's parameters and the modulation."""
    g = torch.Generator().manual_seed(7)
    inputs = norm_inputs(g, 2, 12, 64, torch.float32, *params[:2], params[2] == "a", params[3] == "c", "sample")
    inputs = [tensor.detach().requires_grad_() for tensor in inputs]
    weight = (torch.randn(16, 64, generator=g) / 8).requires_grad_()
    spec = FoldSpec("norm", params)
    folded = sparse_linear(inputs, weight, fold=spec.encode())
    plain = sparse_linear(Norm().reference(inputs, params), weight)
    torch.testing.assert_close(folded, plain, rtol=0, atol=0)
    grad_out = torch.randn_like(plain)
    for actual, want in zip(torch.autograd.grad(folded, (*inputs, weight), grad_out),
                            torch.autograd.grad(plain, (*inputs, weight), grad_out)):  # fmt: skip
        torch.testing.assert_close(actual, want, rtol=1e-4, atol=1e-5)
    torch.library.opcheck(torch.ops.lynx.sparse_linear.default, sparse_linear_call(inputs, weight, fold=spec.encode()))


def test_norm_inputs_that_do_not_fit_are_a_clear_error():
    t = torch.randn(2, 12, 64)
    mean, rstd = statistics(t, "layer")
    with pytest.raises(ValueError, match="does not broadcast"):
        sparse_linear([t, mean, rstd, torch.randn(5, 1, 64)], torch.randn(8, 64),
                      fold="norm(layer,none,a,none)")  # fmt: skip
    with pytest.raises(ValueError, match="takes 3 inputs"):
        sparse_linear([t, mean], torch.randn(8, 64), fold="norm(layer,none,none,none)")
