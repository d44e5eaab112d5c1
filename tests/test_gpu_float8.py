"""GPU checks of lynx's FP8 path (`pytest -m gpu`; skipped without an sm_90 GPU, nvcc or CUTLASS's headers): the FP8
compressor bit-exact with its reference and computing as CUTLASS's own compressor's operand, the FP8 sparse layer
against the simulate numerics, rowwise FP8 dense, and torchao float8 models compiled end to end without a second
copy of their weights."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lynx_compile
from lynx_compile.float8 import dense_float8_linear, quantize_weight
from lynx_compile.folds import IDENTITY, FoldSpec, loading
from lynx_compile.fp8 import float8_linear_ref, quantize_rows
from lynx_compile.kernels import cutlass_gemm, quantize_fp8_single_pass, row_blocking
from lynx_compile.kernels.cutlass_gemm import FP8_CONFIGS
from lynx_compile.kernels.nm_prune import nm_prune_ref
from lynx_compile.kernels.prune_compress_24 import metadata_bytes
from lynx_compile.kernels.prune_quantize_fp8 import (
    prune_quantize_compress_fp8,
    prune_quantize_compress_fp8_ref,
    quantize_rows_fp8,
)
from lynx_compile.method import Method
from lynx_compile.paths import get_path
from lynx_compile.plan import SparseLinearPlan

from cutlass_compressor import assert_same_product_as_cutlass_compressor
from generated_code import extern_gemm_calls, kernel_launches, op_calls
from group_patterns import every_group

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or cutlass_gemm.unavailable_reason() is not None,
                       reason="needs an sm_90 GPU, nvcc and CUTLASS's headers"),  # fmt: skip
]


def activation(rows: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    magnitude = 10.0 ** torch.randint(-5, 3, (rows, 1), device="cuda", generator=g).to(dtype)
    x = torch.randn(rows, k, device="cuda", dtype=dtype, generator=g) * magnitude
    x[:, :4] = 0
    x[:, 4:8] = torch.tensor([0.0, 0.0, 0.0, 2.0])
    x[:, 16:32] = x[:, 16:32].round()
    return x


def assert_computes_as_cutlasss_compressor(x: torch.Tensor, values: torch.Tensor, metadata: torch.Tensor) -> None:
    """The FP8 operand gives the GEMM what CUTLASS's own compressor's does for x pruned and quantized by the
    references (`cutlass_compressor`)."""
    pruned_quantized = quantize_rows(nm_prune_ref(x.float())[0])[0]
    assert_same_product_as_cutlass_compressor(values, metadata, pruned_quantized, FP8_CONFIGS[0])


@pytest.mark.parametrize("single_pass", [None, False])  # the one-pass kernel (chunks past K = 4096), or the general
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, k", [(1, 128), (37, 384), (333, 3072), (1000, 12288), (14040, 512), (130, 15360),
                                     (65, 16384), (3, 16512), (333, 2560), (77, 5120), (333, 1152), (333, 1536),
                                     (333, 4608), (33, 8192)])  # fmt: skip
def test_fp8_compressor_is_bit_exact_with_its_reference_and_computes_as_cutlasss(rows, k, dtype, single_pass):
    x = activation(rows, k, dtype, rows + k)
    values, metadata, scale = prune_quantize_compress_fp8(x, single_pass=single_pass)
    ref_values, ref_metadata, ref_scale = prune_quantize_compress_fp8_ref(x)
    assert torch.equal(values.view(torch.uint8), ref_values.view(torch.uint8))
    assert torch.equal(metadata, ref_metadata)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)
    assert_computes_as_cutlasss_compressor(x, values, metadata)
    quantized, row_scale = quantize_rows_fp8(x, single_pass=single_pass)
    ref_quantized, ref_row_scale = quantize_rows(x)
    assert torch.equal(quantized.view(torch.uint8), ref_quantized.view(torch.uint8))
    assert torch.equal(row_scale, ref_row_scale.reshape(-1))


@pytest.mark.parametrize("rows", [1, 333, 4608])
def test_fp8_one_pass_kernel_reads_two_activations_a_chunk_at_a_time_as_the_general_kernel(rows):
    """FLUX's single-block output projection's x, cat(attention, GELU(MLP)) folded: the one-pass kernel reads the
    attention's three whole chunks and the MLP's through their own activations (`head_chunks`), and writes what the
    general kernels write, bit for bit, pruned and dense."""
    inputs = [activation(rows, 3072, torch.bfloat16, 1), activation(rows, 12288, torch.bfloat16, 2)]
    operands, loader = loading(inputs, FoldSpec("concat", ("none", "gelu_tanh")))
    assert quantize_fp8_single_pass.planned(operands, loader, True, True, True).arguments["HEAD_CHUNKS"] == 3
    values, metadata, scale = prune_quantize_compress_fp8(operands, loader, single_pass=True)
    general = prune_quantize_compress_fp8(operands, loader, single_pass=False)
    assert torch.equal(values.view(torch.uint8), general[0].view(torch.uint8)) and torch.equal(metadata, general[1])
    torch.testing.assert_close(scale, general[2], rtol=1e-5, atol=0)  # the energies summed in another order
    quantized, row_scale = quantize_rows_fp8(operands, loader, single_pass=True)
    general = quantize_rows_fp8(operands, loader, single_pass=False)
    assert torch.equal(quantized.view(torch.uint8), general[0].view(torch.uint8))
    assert torch.equal(row_scale, general[1])


@pytest.mark.parametrize("raw_max", [None, True])  # the first look as `planned` decides; the magnitude first always
@pytest.mark.parametrize("name", ["gelu_tanh", "silu"])
@pytest.mark.parametrize("rows, k", [(333, 1152), (4608, 3072), (333, 4608), (333, 12288)])  # held; read twice
def test_fp8_one_pass_kernel_with_an_activation_folded_writes_the_general_kernels_bits(rows, k, name, raw_max):
    """X = act(t) on load, rows held in registers (K ≤ 8192) or read twice: the first look takes every statistic
    (short rows held) or the largest magnitude before the activation where that is sure (`RAW_MAX`; rows of
    10⁻⁵ … 10² here, so the small ones are read again through it), and the operand equals the general kernels' bit
    for bit, pruned and dense."""
    g = torch.Generator(device="cuda").manual_seed(k)  # (not `activation`: its rows all hold a 2.0)
    magnitude = 10.0 ** torch.randint(-5, 3, (rows, 1), device="cuda", generator=g)
    x = (torch.randn(rows, k, device="cuda", generator=g) * magnitude).to(torch.bfloat16)
    operands, loader = loading([x], FoldSpec("activation", (name,)))
    first_look = dict(raw_max=raw_max)
    planned = quantize_fp8_single_pass.planned(operands, loader, True, True, True, **first_look).arguments
    assert planned["RAW_MAX"] == (raw_max or not planned["HELD"] or k // 8 > row_blocking.STATISTICS_FIRST_PAIRS)
    values = torch.empty(rows, k // 2, dtype=torch.float8_e4m3fn, device="cuda")
    metadata = torch.empty(metadata_bytes(rows, k), dtype=torch.uint8, device="cuda")
    scale = quantize_fp8_single_pass.launch(operands, loader, values, metadata, True, True, True, **first_look)
    general = prune_quantize_compress_fp8(operands, loader, single_pass=False)
    assert torch.equal(values.view(torch.uint8), general[0].view(torch.uint8)) and torch.equal(metadata, general[1])
    torch.testing.assert_close(scale, general[2], rtol=1e-5, atol=0)  # the energies summed in another order
    quantized = torch.empty(rows, k, dtype=torch.float8_e4m3fn, device="cuda")
    row_scale = quantize_fp8_single_pass.launch(operands, loader, quantized, metadata, False, True, True, **first_look)
    general = quantize_rows_fp8(operands, loader, single_pass=False)
    assert torch.equal(quantized.view(torch.uint8), general[0].view(torch.uint8))
    assert torch.equal(row_scale, general[1].reshape(-1))


@pytest.mark.parametrize("single_pass", [None, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_compressor_stores_every_group_pattern_as_its_reference_for_cutlasss_product(dtype, single_pass):
    """Kept members that are zero, -0.0 or round to zero in e4m3, at every pair of positions (`every_group`)."""
    x = every_group(dtype, "cuda")
    values, metadata, _ = prune_quantize_compress_fp8(x, single_pass=single_pass)
    ref_values, ref_metadata, _ = prune_quantize_compress_fp8_ref(x)
    assert torch.equal(values.view(torch.uint8), ref_values.view(torch.uint8)) and torch.equal(metadata, ref_metadata)
    assert_computes_as_cutlasss_compressor(x, values, metadata)


@pytest.mark.parametrize("rows, k, n", [(1, 128, 16), (77, 256, 40), (4608, 3072, 3072), (513, 12288, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fp8_sparse_layer_equals_the_simulated_numerics(rows, k, n, with_bias):
    g = torch.Generator(device="cuda").manual_seed(rows)
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16, generator=g)
    weight = quantize_weight(torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) / k**0.5)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=g) if with_bias else None
    path = get_path("cutlass_float8")
    for config in FP8_CONFIGS:
        plan = SparseLinearPlan("cutlass_float8", Method(), params=(("config", config.name), ("raster", "along_m"),
                                                                    ("swizzle", 2)))  # fmt: skip
        out = path.forward([x], weight, bias, None, plan)
        expected = float8_linear_ref(x, weight.qdata, weight.scale, bias, Method())
        torch.testing.assert_close(out.float(), expected.float(), rtol=1e-2, atol=1e-2 * expected.abs().max().item())


def test_rowwise_fp8_dense_is_the_reference_numerics():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(300, 1024, device="cuda", dtype=torch.bfloat16, generator=g)
    weight = quantize_weight(torch.randn(512, 1024, device="cuda", dtype=torch.bfloat16, generator=g) / 32)
    bias = torch.randn(512, device="cuda", dtype=torch.bfloat16, generator=g)
    out = dense_float8_linear([x], IDENTITY, weight, bias)
    expected = float8_linear_ref(x, weight.qdata, weight.scale, bias)
    torch.testing.assert_close(out.float(), expected.float(), rtol=1e-2, atol=1e-2 * expected.abs().max().item())
    folded = dense_float8_linear([x], FoldSpec("activation", ("gelu_tanh",)), weight, None)
    expected = float8_linear_ref(F.gelu(x, approximate="tanh"), weight.qdata, weight.scale)
    torch.testing.assert_close(folded.float(), expected.float(), rtol=2e-2, atol=2e-2 * expected.abs().max().item())


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return ((out.float() - reference.float()).norm() / reference.float().norm()).item()


class FeedForward(nn.Module):
    def __init__(self, dim: int = 1024, hidden: int = 4096) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(x), approximate="tanh"))


def compiled_on_the_fp8_path(module: type[nn.Module], graphs: bool):
    """A `module` (built seeded) quantized by torchao's rowwise float8 and compiled with lynx on the FP8 sparse path (every layer
    that can: min_speedup ~0): the lynx report; its outputs equal the simulate numerics on two inputs (with CUDA
    graphs, the second is a replay on new data)."""
    pytest.importorskip("torchao")
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    torch.manual_seed(0)
    model = module().cuda().to(torch.bfloat16).eval()
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    x = torch.randn(2, 1000, 1024, device="cuda", dtype=torch.bfloat16)
    options = {"execution": "sparse", "min_speedup": 1e-6, **({"triton.cudagraphs": True} if graphs else {})}
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        compiled = torch.compile(model, backend="lynx", options=options)
        out = compiled(x)
    with torch.no_grad():
        simulated = torch.compile(model, backend="lynx", options={"execution": "simulate"})
        assert relative_error(out, simulated(x)) < 1e-2
        x2 = torch.randn_like(x)
        # A hidden layer's bf16 rounding differs in the last bit here and there (fused epilogue vs reference),
        # which can flip a near-tie of the next layer's pruning: elementwise, a few outputs move by more than
        # rounding; as a whole they agree.
        assert relative_error(compiled(x2), simulated(x2)) < 1e-2
    return report


@pytest.mark.parametrize("graphs", [False, True])
def test_torchao_float8_model_compiles_on_the_fp8_sparse_path(graphs):
    report = compiled_on_the_fp8_path(FeedForward, graphs)
    sparse = [layer for layer in report.layers if layer.decision == "sparse" and layer.path == "cutlass_float8"]
    assert len(sparse) == 2, [layer.reason for layer in report.layers]


class Attention(nn.Module):
    """q, k, v of one normalised x (k wider, v without bias), as diffusers spells them, then an output projection."""

    def __init__(self, dim: int = 1024) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        return x + self.to_out(v * (q * k[..., : q.shape[-1]]).mean(-1, keepdim=True).sigmoid())


@pytest.mark.parametrize("graphs", [False, True])
def test_torchao_float8_siblings_run_as_one_group(graphs):
    """q, k, v quantized by torchao: one FP8 compress for the three GEMMs (`lynx::float8_sparse_linear_group` on
    the CUTLASS FP8 path), the result that of the simulate numerics, member by member."""
    report = compiled_on_the_fp8_path(Attention, graphs)
    layers = {layer.name: layer for layer in report.layers}
    for name in ("to_q", "to_k", "to_v"):
        assert layers[name].siblings == ("to_q", "to_k", "to_v") and layers[name].path == "cutlass_float8", \
            layers[name].reason  # fmt: skip
    assert report.graphs[0].after.count("lynx.float8_sparse_linear_group.default") == 1


@pytest.mark.parametrize("module, compressors, launched", [(FeedForward, 2, 2), (Attention, 2, 1)])
def test_float8_ops_on_the_cutlass_path_are_lowered_into_kernels(module, compressors, launched):
    """Without CUDA graphs a `custom_op`'s Python layers cost every call; on the CUTLASS FP8 path Inductor's code
    calls the FP8 GEMM directly (`paths/lowered_gemm.py`), and launches the one-pass compressor itself wherever it
    provably reads x (x as it is, or through GELU; `paths/lowered_compressors.py`), the compressor op elsewhere: at
    least `launched` of the `compressors` (Attention's q, k, v read a norm, folded — the op — or written out first,
    as the rule times; FeedForward's up reads the graph's input, launched as well)."""
    pytest.importorskip("torchao")
    from torch._inductor.utils import run_and_get_code
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    torch.manual_seed(0)
    model = module().cuda().to(torch.bfloat16).eval()
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    x = torch.randn(2, 1000, 1024, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(model, backend="lynx", options={"execution": "sparse", "min_speedup": 1e-6})
    with torch.no_grad():
        _, code = run_and_get_code(compiled, x)
    code = "\n".join(code)
    calls = op_calls(code)
    assert "float8_sparse_linear" not in calls and "float8_sparse_linear_group" not in calls, calls
    assert "cutlass_sparse_mm" not in calls and extern_gemm_calls(code) >= 1, calls
    launches = kernel_launches(code, "_single_pass_kernel")
    assert launches >= launched and calls.count("prune_quantize_compress_fp8") == compressors - launches, calls


def test_compiling_a_float8_model_stores_no_second_weight():
    """The issue's memory goal: after compiling (and measuring, and a forward), live GPU memory grows by at most 2%
    of the model's weight bytes — the e4m3 weight is read in place, nothing of it copied."""
    pytest.importorskip("torchao")
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    torch.manual_seed(0)
    model = FeedForward(2048, 8192).cuda().to(torch.bfloat16).eval()
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    weight_bytes = sum(module.weight.qdata.numel() for module in (model.up, model.down))
    x = torch.randn(1, 2048, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        model(x)  # torchao's own forward first: cuBLASLt's workspace (1 MiB, once per process) is not lynx's
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with torch.no_grad():
        compiled = torch.compile(model, backend="lynx", options={"execution": "sparse", "min_speedup": 1e-6})
        compiled(x)  # the output, unreferenced, is freed
    torch.cuda.synchronize()
    growth = torch.cuda.memory_allocated() - before
    assert growth <= 0.02 * weight_bytes, f"{growth} bytes more after compiling, weights {weight_bytes}"
