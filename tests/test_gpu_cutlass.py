"""GPU checks of lynx's CUTLASS sparse GEMM (`pytest -m gpu`; skipped without an sm_90 GPU, nvcc or CUTLASS's headers):
the Triton compressor against its reference and CUTLASS's own compressor, the kernel against the reference, graph
replays, and the path in a compiled model."""

import pytest
import torch
import torch.nn as nn

import lynx_compile
from lynx_compile.folds import IDENTITY, FoldSpec, compress_cutlass, loading
from lynx_compile.kernels import cutlass_gemm
from lynx_compile.kernels import prune_compress_24_single_pass as one_pass
from lynx_compile.kernels.cutlass_gemm import CONFIGS, RASTERS, GemmConfig
from lynx_compile.kernels.cutlass_layout import prune_compress_24_ref, sparse_mm_ref
from lynx_compile.kernels.nm_prune import nm_prune_ref
from lynx_compile.kernels.prune_compress_24 import prune_compress_24_cutlass

from cutlass_compressor import assert_same_product_as_cutlass_compressor
from generated_code import extern_gemm_calls, kernel_launches, op_calls
from group_patterns import every_group

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or cutlass_gemm.unavailable_reason() is not None,
                       reason="needs an sm_90 GPU, nvcc and CUTLASS's headers"),  # fmt: skip
]


def awkward_activation(rows: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random x with the groups the stored-index rules treat specially: all zero, one nonzero (at 3 and below 3),
    -0.0 among the kept, exact ties."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(rows, k, device="cuda", dtype=dtype, generator=g)
    x[:, :4] = 0
    x[:, 4:8] = torch.tensor([0.0, 0.0, 0.0, 2.0])
    x[:, 8:12] = torch.tensor([0.0, 3.0, 0.0, 0.0])
    x[:, 12:16] = torch.tensor([-0.0, 1.0, -0.0, 0.0])
    x[:, 16:32] = x[:, 16:32].round()
    return x


@pytest.mark.parametrize("single_pass", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, k", [(1, 64), (37, 192), (333, 3072), (1000, 12288), (14040, 512),
                                     (333, 2560),  # 5 chunks of 64 pairs: a 2-warp program
                                     (333, 1152), (333, 1088), (333, 4608)])  # no power of two divides  # fmt: skip
def test_compressor_is_bit_exact_with_its_reference_and_computes_as_cutlass_compressor(rows, k, dtype, single_pass):
    x = awkward_activation(rows, k, dtype, rows + k)
    values, metadata, scale = compress_cutlass([x], IDENTITY, single_pass=single_pass)
    ref_values, ref_metadata, ref_scale = prune_compress_24_ref(x)
    assert torch.equal(values.view(torch.int16), ref_values.view(torch.int16))
    assert torch.equal(metadata, ref_metadata)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)
    assert_same_product_as_cutlass_compressor(values, metadata, nm_prune_ref(x)[0], CONFIGS[0])


@pytest.mark.parametrize("rows", [1, 333, 4608])
def test_the_one_pass_kernel_reads_two_activations_a_chunk_at_a_time_as_the_general_kernel(rows):
    """FLUX's single-block output projection's x, cat(attention, GELU(MLP)) folded: the one-pass kernel takes it
    (the attention's 3072 columns are three whole chunks) and writes the general kernel's operand, bit for bit."""
    spec = FoldSpec("concat", ("none", "gelu_tanh"))
    inputs = [awkward_activation(rows, 3072, torch.bfloat16, 1), awkward_activation(rows, 12288, torch.bfloat16, 2)]
    assert one_pass.applies(*loading(inputs, spec))
    launched, general = compress_cutlass(inputs, spec), compress_cutlass(inputs, spec, single_pass=False)
    assert torch.equal(launched[0].view(torch.int16), general[0].view(torch.int16))
    assert torch.equal(launched[1], general[1])
    torch.testing.assert_close(launched[2], general[2], rtol=1e-5, atol=0)


@pytest.mark.parametrize("single_pass", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compressor_stores_every_group_pattern_as_its_reference_for_cutlass_product(dtype, single_pass):
    x = every_group(dtype, "cuda")
    values, metadata, _ = compress_cutlass([x], IDENTITY, single_pass=single_pass)
    ref_values, ref_metadata, _ = prune_compress_24_ref(x)
    assert torch.equal(values.view(torch.int16), ref_values.view(torch.int16))
    assert torch.equal(metadata, ref_metadata)
    assert_same_product_as_cutlass_compressor(values, metadata, nm_prune_ref(x)[0], CONFIGS[0])


@pytest.mark.parametrize("config, dtype", [(config, torch.bfloat16) for config in CONFIGS]
                         + [(CONFIGS[0], torch.float16)], ids=lambda value: getattr(value, "name", str(value)))
@pytest.mark.parametrize("rows, k, n", [(1, 64, 16), (37, 192, 264), (333, 3072, 3072), (4608, 3072, 9216),
                                        (14040, 5120, 5120)])  # fmt: skip
def test_gemm_equals_the_reference_with_and_without_its_epilogue(rows, k, n, dtype, config):
    x = awkward_activation(rows, k, dtype, rows * n)
    weight = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    bias = torch.randn(n, device="cuda", dtype=dtype)
    values, metadata, scale = prune_compress_24_cutlass(x)
    for with_scale, with_bias in [(False, False), (True, False), (False, True), (True, True)]:
        s, b = (scale if with_scale else None), (bias if with_bias else None)
        for raster in RASTERS.values():
            out = cutlass_gemm.sparse_mm(values, metadata, weight, s, b, config, raster)
            ref = sparse_mm_ref(values, metadata, weight, s, b)
            # fp32 accumulation in another order, one rounding to 16 bits each: a last-bit difference at most
            torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)


# Stream-K at a shape whose last wave it splits (432 tiles of 128 × 256 on 132 SMs): its partial sums go through a
# workspace the graph allocates and zeroes at every replay, and are added in a fixed order, so replays equal eager.
@pytest.mark.parametrize("config, rows, k, n", [(CONFIGS[0], 1000, 3072, 3072)]
                         + [(config, 4608, 15360, 3072) for config in CONFIGS if config.stream_k],
                         ids=lambda value: getattr(value, "name", str(value)))  # fmt: skip
def test_gemm_replays_from_a_cuda_graph_with_changing_inputs(config, rows, k, n):
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)

    def layer():
        values, metadata, scale = prune_compress_24_cutlass(x)
        return cutlass_gemm.sparse_mm(values, metadata, weight, scale, bias, config)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer()
    for seed in range(3):
        generator = torch.Generator("cuda").manual_seed(seed)
        x.copy_(torch.randn(rows, k, device="cuda", dtype=torch.bfloat16, generator=generator))
        graph.replay()
        assert torch.equal(out, layer())


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(512, 512), nn.Linear(512, 512), nn.Linear(512, 512)
        self.up, self.down = nn.Linear(512, 2048), nn.Linear(2048, 512)

    def forward(self, x):
        x = x + self.q(x) * self.k(x) + self.v(x)
        return x + self.down(nn.functional.gelu(self.up(x), approximate="tanh"))


@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "no-graphs"])
def test_cutlass_path_runs_a_model_like_simulate(graphs):
    torch.manual_seed(0)
    model = Block().cuda().to(torch.bfloat16).eval()
    options = {"min_speedup": 1e-6, "sparse_paths": "cutlass", **({"mode": "reduce-overhead"} if graphs else {})}
    x = torch.randn(3, 333, 512, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        report = lynx_compile.explain(model, x, options={**options, "execution": "sparse"})
        assert report.sparse_layers and all("CUTLASS" in layer.reason for layer in report.sparse_layers)
        torch._dynamo.reset()
        sparse = torch.compile(model, backend="lynx", options={**options, "execution": "sparse"})
        simulate = torch.compile(model, backend="lynx", options={**options, "execution": "simulate"})
        skipped = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]
        for _ in range(3):
            x = torch.randn_like(x)
            out, expected = sparse(x).clone(), simulate(x)
            rel = ((out.float() - expected.float()).norm() / expected.float().norm()).item()
            assert rel < 2e-2  # bf16 roundings in other places flip a few near-tied masks
        # q, k, v's compressor launch reads the graph's input: were Inductor to count it written, the graph would
        # lose its CUDA graphs ("skipping cudagraphs due to mutated inputs")
        assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == skipped


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
# the two compiles differ after the pass (no FX graph cache); not monkeypatch, which hides a config option it undoes
@torch._inductor.config.patch(fx_graph_cache=False, emulate_precision_casts=True)
def test_inductor_launches_the_compressor_with_the_ops_results(dynamic, monkeypatch):
    """Lowered, each compressor that reads x made inside the graph (up's; down's, GELU on load) is the one-pass
    kernel launched from Inductor's code, no op around it (`paths/lowered_compressors.py`), each GEMM a direct call
    from that code (`paths/lowered_gemm.py`), and the model's output is the one it gives with the ops kept, bit for
    bit, on token counts the graph was not traced with where it is dynamic. Inductor rounds its intermediates as
    eager does here (`emulate_precision_casts`): the two graphs fuse their pointwise work differently (the launch,
    which Inductor sees only reading x, leaves it freer than the opaque op does), and a fused kernel's unrounded
    intermediates moved 29% of the outputs by a rounding (session 18), which says nothing of the compressor."""
    from torch._inductor.utils import run_and_get_code

    from lynx_compile.paths import cutlass as cutlass_path
    from lynx_compile.paths import lowered_compressors, lowered_gemm

    def op_kept(*args):
        raise NotImplementedError("the op kept, for comparison")

    torch.manual_seed(0)
    model = Block().cuda().to(torch.bfloat16).eval()
    options = {"min_speedup": 1e-6, "sparse_paths": "cutlass", "execution": "sparse"}
    inputs = [torch.randn(3, tokens, 512, device="cuda", dtype=torch.bfloat16) for tokens in (333, 200, 1024)]
    outputs = {}
    for kept in (False, True):
        torch._dynamo.reset()
        if kept:
            monkeypatch.setattr(lowered_compressors, "compress_cutlass", cutlass_path._compress_op)
            monkeypatch.setattr(lowered_gemm, "_extern_call", op_kept)
        compiled = torch.compile(model, backend="lynx", options=options, dynamic=dynamic)
        with torch.no_grad():
            first, code = run_and_get_code(compiled, inputs[0])
            outputs[kept] = [first, *(compiled(x) for x in inputs[1:] if dynamic)]
        code = "\n".join(code)
        launches, ops = kernel_launches(code, "_single_pass_kernel"), op_calls(code)
        # q, k, v's group reads the graph's input, launched as well (Inductor finds the launch writes x not)
        assert (launches, ops.count("prune_compress_24_cutlass")) == ((0, 3) if kept else (3, 0)), (launches, ops)
        assert (extern_gemm_calls(code), ops.count("cutlass_sparse_mm")) == ((0, 5) if kept else (5, 0)), ops
    for launched, kept in zip(outputs[False], outputs[True]):
        assert torch.equal(launched, kept)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("replayed", [False, True], ids=["launched", "replayed"])
def test_the_speed_rules_compressor_writes_the_ops_operand(fp8, replayed):
    """The compressor as the speed rule times it (`lowered_compressors.as_lowered_*`: a planned launch, replayed
    from a CUDA graph without CUDA graphs) writes what the op writes, bit for bit, on every call after x changed."""
    from lynx_compile.folds import FoldSpec
    from lynx_compile.paths import lowered_compressors

    spec = FoldSpec("activation", ("gelu_tanh",))
    x = torch.randn(333, 3072, device="cuda", dtype=torch.bfloat16)
    if fp8:
        compress = lowered_compressors.as_lowered_fp8([x], spec, replayed=replayed)
        op = lambda: torch.ops.lynx.prune_quantize_compress_fp8([x], spec.encode(), True)  # noqa: E731
    else:
        compress = lowered_compressors.as_lowered_cutlass([x], spec, replayed=replayed)
        op = lambda: torch.ops.lynx.prune_compress_24_cutlass([x], spec.encode())  # noqa: E731
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        for out, expected in zip(compress(), op()):
            assert torch.equal(out.view(torch.uint8), expected.view(torch.uint8))


def test_host_cost_of_a_call_without_cuda_graphs():
    """Not a speed goal, a regression guard: a call is one C call and a launch, far from a plan's 0.5 ms."""
    import time

    rows, k, n = 64, 512, 512
    values, metadata, scale = prune_compress_24_cutlass(torch.randn(rows, k, device="cuda", dtype=torch.bfloat16))
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    config = GemmConfig()
    cutlass_gemm.sparse_mm(values, metadata, weight, scale, None, config)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(200):
        cutlass_gemm.sparse_mm(values, metadata, weight, scale, None, config)
    host_us = (time.perf_counter() - start) / 200 * 1e6
    torch.cuda.synchronize()
    print(f"host µs per call: {host_us:.1f}")
    assert host_us < 200


def fp8_operands(rows: int, k: int, n: int, seed: int):
    """A pruned activation and a weight quantized rowwise to e4m3 (`lynx_compile.fp8`), with their scales."""
    from lynx_compile.fp8 import quantize_rows

    x = awkward_activation(rows, k, torch.bfloat16, seed)
    kept, norm_scale = nm_prune_ref(x.float())
    kept_q, kept_scale = quantize_rows(kept)
    weight_q, weight_scale = quantize_rows(torch.randn(n, k, device="cuda") / k**0.5)
    return kept_q, (kept_scale.reshape(-1) * norm_scale).contiguous(), weight_q, weight_scale.reshape(-1).contiguous()


@pytest.mark.parametrize("rows, k", [(1, 128), (37, 256), (1000, 3072), (4608, 12288)])
def test_fp8_encoder_is_bit_exact_with_cutlass_compressor(rows, k):
    from lynx_compile.kernels.cutlass_layout import compress_24_ref

    kept_q, _, _, _ = fp8_operands(rows, k, 16, rows + k)
    values, metadata = compress_24_ref(kept_q)
    lib = cutlass_gemm.library(cutlass_gemm.FP8_CONFIGS[0], torch.float8_e4m3fn)
    assert lib.info()[0] == 2 and lib.info()[7:10] == [64, 128, 8]
    ref_values, ref_metadata = lib.compress_reference(kept_q)
    assert torch.equal(values.view(torch.uint8), ref_values.view(torch.uint8))
    assert torch.equal(metadata, ref_metadata)


@pytest.mark.parametrize("config", cutlass_gemm.FP8_CONFIGS, ids=lambda config: config.name)
@pytest.mark.parametrize("rows, k, n", [(1, 128, 16), (37, 256, 264), (4608, 3072, 3072), (14040, 5120, 5120)])
def test_fp8_gemm_equals_the_reference_with_its_scales(rows, k, n, config):
    from lynx_compile.kernels.cutlass_layout import compress_24_ref

    kept_q, row_scale, weight_q, weight_scale = fp8_operands(rows, k, n, rows * n)
    values, metadata = compress_24_ref(kept_q)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    for raster in (0, 1):
        out = cutlass_gemm.sparse_mm(values, metadata, weight_q, row_scale, bias, config, raster,
                                     weight_scale=weight_scale)  # fmt: skip
        assert out.dtype == torch.bfloat16
        ref = sparse_mm_ref(values, metadata, weight_q, row_scale, bias, weight_scale)
        torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)
