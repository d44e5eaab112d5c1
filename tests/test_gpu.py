"""GPU checks (`pytest -m gpu`, run through the device tool; skipped without CUDA): the compiled Triton kernel, not
the interpreter, must agree with the reference, and the backend must run the kernel inside compiled graphs."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_op import sparse_linear

import lynx_compile
from lynx_compile.kernels.nm_prune import nm_prune_ref, nm_prune_triton
from lynx_compile.packing import adjacent_rows

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SHAPES = [(1, 16), (7, 12), (128, 1152), (333, 3072), (4608, 3072), (1000, 12288), (64, 15360)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows, k", SHAPES)
@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_kernel_matches_reference_on_gpu(rows, k, dtype, n, m):
    if k % m:
        pytest.skip("K not a multiple of m")
    g = torch.Generator(device="cuda").manual_seed(rows * k)
    x = torch.randn(rows, k, device="cuda", dtype=dtype, generator=g)
    x[:, : k // 2] = x[:, : k // 2].round()  # exact ties in half of each row
    out = torch.full_like(x, float("nan"))  # poison: every element must be written
    pruned, scale = nm_prune_triton(x, n, m)
    out.copy_(pruned)
    ref_pruned, ref_scale = nm_prune_ref(x, n, m)
    assert torch.equal(out, ref_pruned)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)


def test_kernel_honours_strides_on_gpu():
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16).t()
    assert torch.equal(nm_prune_triton(x)[0], nm_prune_ref(x)[0])


def mlp(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256)).cuda().to(dtype).eval()


def test_compiled_model_matches_eager_simulation_across_cuda_graph_replays():
    """fp32, so that Inductor's and eager's rounding cannot flip a near-tie in a mask (bf16 ties are common)."""
    model = mlp(torch.float32)
    x = torch.randn(2, 300, 256, device="cuda")
    with torch.no_grad():
        simulate = {"execution": "simulate"}  # on an H100 the default ("auto") is the sparse path
        report = lynx_compile.explain(model, x, options=simulate)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="lynx", options={**simulate, "mode": "reduce-overhead"})
        eager = torch.compile(model, backend="lynx", options={**simulate, "compiler": "eager"})
        for _ in range(4):  # later calls replay the CUDA graph; fresh inputs each time
            x = torch.randn_like(x)
            out, expected = compiled(x).clone(), eager(x)
            rel = (out - expected).norm() / expected.norm()
            assert rel < 1e-3, rel
    assert [layer.decision for layer in report.layers] == ["sparse", "sparse"]


def test_compiled_bf16_linear_matches_the_eager_op():
    """One bf16 layer, same input: the masks agree exactly and only GEMM and epilogue rounding may differ."""
    layer = mlp(torch.bfloat16)[0]
    x = torch.randn(4608, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        out = torch.compile(layer, backend="lynx", options={"execution": "simulate"})(x)
        expected = sparse_linear(x, layer.weight, layer.bias)
    rel = (out.float() - expected.float()).norm() / expected.float().norm()
    assert rel < 1e-2, rel


# ---- the fused compressor against cuSPARSELt itself ----------------------------------------------------------------

needs_sm90 = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)), reason="layout known for sm_90"
)
COMPRESS_SHAPES = [(64, 64), (128, 128), (16, 64), (48, 192), (80, 256), (4608, 3072), (2048, 1152), (4608, 15360),
                   (1040, 4608)]  # fmt: skip


@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, k", COMPRESS_SHAPES)
def test_compressor_is_bit_exact_with_cusparselt(rows, k, dtype):
    from lynx_compile.kernels.cusparselt_layout import compress_24_ref
    from lynx_compile.kernels.prune_compress_24 import as_flat, compressed_numel, prune_compress_24

    g = torch.Generator(device="cuda").manual_seed(rows + k)
    x = torch.randn(rows, k, device="cuda", dtype=dtype, generator=g)
    x[: rows // 2, : k // 2] = x[: rows // 2, : k // 2].round()  # ties and exact zeros
    x[0, :8] = torch.tensor([0.0, -0.0, 0.0, 1.0, -0.0, 0.0, 0.0, 0.0])
    ours, scale = prune_compress_24(x)
    pruned, ref_scale = nm_prune_ref(x)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)
    torch_operand = torch._cslt_compress(pruned)
    expected = torch_operand.flatten()[: compressed_numel(rows, k)]
    assert ours.shape == torch_operand.shape
    assert torch.equal(compress_24_ref(pruned).view(torch.int16), expected.view(torch.int16))
    assert torch.equal(as_flat(ours, rows, k).view(torch.int16), expected.view(torch.int16))


@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("widths, names", [((3072, 12288), ("none", "gelu_tanh")), ((4608,), ("gelu_tanh",)),
                                           ((1024, 512), ("gelu", "gelu_tanh"))])  # fmt: skip
def test_folding_compressor_is_bit_exact_with_cusparselt(widths, names, dtype):
    """Pieces with activations on load == cuSPARSELt's compression of x = cat(act(piece)) written out (by the
    same activation code; its agreement with torch's GELU is tests/kernels/test_prune_compress_24.py's)."""
    from lynx_compile.folds import FoldSpec, compress
    from lynx_compile.kernels.activations import activate
    from lynx_compile.kernels.prune_compress_24 import as_flat, compressed_numel

    g = torch.Generator(device="cuda").manual_seed(sum(widths))
    rows, k = 1040, sum(widths)
    pieces = [torch.randn(rows, width, device="cuda", dtype=dtype, generator=g) for width in widths]
    spec = FoldSpec("concat", names) if len(pieces) > 1 else FoldSpec("activation", names)
    ours, _ = compress(pieces, spec)
    pruned, _ = nm_prune_ref(torch.cat([activate(p, n) for p, n in zip(pieces, names)], 1))
    expected = torch._cslt_compress(pruned).flatten()[: compressed_numel(rows, k)]
    assert torch.equal(as_flat(ours, rows, k).view(torch.int16), expected.view(torch.int16))


@needs_sm90
@pytest.mark.parametrize("rows, k", [(1, 64), (37, 192), (1000, 3072), (14040, 512)])
def test_padded_compressor_is_bit_exact_with_cusparselt_of_the_padded_matrix(rows, k):
    """Any M: the operand padded to M % 16 == 0 is cuSPARSELt's compression of x̃ with zero rows appended."""
    from lynx_compile.kernels.prune_compress_24 import as_flat, compressed_numel, padded_rows, prune_compress_24

    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    ours, scale = prune_compress_24(x, pad_rows_to=16)
    stored = padded_rows(rows, 16)
    pruned, _ = nm_prune_ref(x)
    padded = torch.cat([pruned, pruned.new_zeros(stored - rows, k)])
    expected = torch._cslt_compress(padded)
    assert ours.shape == expected.shape and scale.shape == (rows,)
    assert torch.equal(as_flat(ours, stored, k).view(torch.int16),
                       expected.flatten()[: compressed_numel(stored, k)].view(torch.int16))  # fmt: skip


@needs_sm90
def test_sparse_gemm_on_our_buffer_equals_the_simulated_layer():
    from lynx_compile.kernels.prune_compress_24 import prune_compress_24

    x = torch.randn(4608, 3072, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(1024, 3072, device="cuda", dtype=torch.bfloat16) / 3072**0.5
    operand, scale = prune_compress_24(x)
    out = torch._cslt_sparse_mm(operand, weight.t()) * scale[:, None]
    pruned, ref_scale = nm_prune_ref(x)
    expected = (pruned.float() @ weight.float().t()) * ref_scale[:, None]
    rel = (out.float() - expected).norm() / expected.norm()
    assert rel < 1e-2, rel


# ---- execution="sparse" end to end ----------------------------------------------------------------------------------

FORCE_SPARSE = {"execution": "sparse", "min_speedup": 1e-3}  # the speed rule aside: test the path itself


@needs_sm90
@pytest.mark.parametrize(
    "compile_kwargs",
    [{"mode": "reduce-overhead"}, {"options": {**FORCE_SPARSE, "triton.cudagraphs": True}}, {"options": FORCE_SPARSE}],
    ids=["mode", "option", "no-graphs"],
)
@pytest.mark.parametrize("tokens", [512, 333])
def test_sparse_execution_is_right_across_replays(compile_kwargs, tokens):
    """mode= alone leaves the default speed rule in charge: the layer may go either way, but must be right. 333
    tokens: the operand is padded to 336 rows and the layer's output is the GEMM's first 333."""
    layer = nn.Linear(1024, 2048).cuda().to(torch.bfloat16).eval()
    compiled = torch.compile(layer, backend="lynx", **compile_kwargs)
    x = torch.randn(tokens, 1024, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        for _ in range(3):  # later calls replay the CUDA graph (where on); fresh inputs each time
            x = torch.randn_like(x)
            out = compiled(x).clone()
            (decision,) = report.layers
            if decision.decision == "sparse":
                expected = sparse_linear(x, layer.weight, layer.bias)
            else:
                expected = layer(x)
            rel = (out.float() - expected.float()).norm() / expected.float().norm()
            assert rel < 1e-2, (rel, decision.reason)
    if "options" in compile_kwargs:
        assert decision.decision == "sparse" and "sparse tensor cores" in decision.reason, decision.reason


@needs_sm90
@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "no-graphs"])
def test_sparse_execution_with_a_lora_correction_matches_simulate(graphs):
    model = nn.Sequential(nn.Linear(1024, 2048)).cuda().to(torch.bfloat16).eval()
    samples = [torch.randn(512, 1024, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    # A fixed λ: on random data cross-validation rightly finds nothing worth correcting; this tests the execution.
    policy = lynx_compile.calibrate(model, samples, target=1.0, lora_rank=16, ridge=1.0)
    assert policy.layers["0"].lora_rank == 16
    options = {**FORCE_SPARSE, "policy": policy, "triton.cudagraphs": graphs}
    compiled = torch.compile(model, backend="lynx", options=options)
    adapter = policy.adapter_for("0").to("cuda", torch.bfloat16)
    layer = model[0]
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        for _ in range(3):
            x = torch.randn_like(samples[0])
            out = compiled(x).clone()
            expected = sparse_linear(x, layer.weight, layer.bias, (adapter.a, adapter.b))
            rel = (out.float() - expected.float()).norm() / expected.float().norm()
            assert rel < 1e-2, rel
    (decision,) = report.layers
    assert decision.decision == "sparse" and "rank-16 LoRA included" in decision.reason, decision.reason


@needs_sm90
def test_speed_rule_keeps_small_layers_dense():
    layer = nn.Linear(1152, 4608).cuda().to(torch.bfloat16).eval()  # DiT-XL at 256²: no gain on sparse cores
    x = torch.randn(2048, 1152, device="cuda", dtype=torch.bfloat16)
    report = lynx_compile.explain(layer, x, options={"execution": "sparse"})
    (decision,) = report.layers
    assert decision.decision == "dense" and "measured" in decision.reason, decision.reason


@needs_sm90
@pytest.mark.parametrize("name", ["flux", "wan"])
def test_tiny_diffusers_model_sparse_matches_simulate(name):
    import sys

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from zoo import ZOO, output_tensor, to_cuda_bf16

    entry = ZOO[name]
    model = entry.build().cuda().to(torch.bfloat16)
    inputs = to_cuda_bf16(entry.make_inputs(0))
    outputs, sparse_names = {}, []
    for execution in ("sparse", "simulate", "dense"):  # simulate exactly the layers the sparse run put on sparse cores
        torch._dynamo.reset()
        options = {"execution": execution, "min_speedup": 1e-3, "include": sparse_names}
        with torch.no_grad(), lynx_compile.collect_reports() as report:
            outputs[execution] = output_tensor(torch.compile(model, backend="lynx", fullgraph=True,
                                                             options=options)(**inputs)).float()  # fmt: skip
        if execution == "sparse":
            sparse_names = [layer.name for layer in report.sparse_layers]
            assert sparse_names and all("sparse tensor cores" in layer.reason for layer in report.sparse_layers)
        elif execution == "simulate":
            assert sorted(layer.name for layer in report.sparse_layers) == sorted(sparse_names)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    # Each layer alone agrees to bf16 rounding (test_sparse_execution_is_right_across_replays); through a model,
    # s·x̃ rounded before the GEMM vs after it flips near-ties in later masks, and at this toy K = 64 one flip moves
    # a row by ~1/sqrt(32). So the bound is relative to what pruning itself changes; a wrong layout would be O(1).
    assert rel(outputs["sparse"], outputs["simulate"]) < 0.5 * rel(outputs["simulate"], outputs["dense"])


@needs_sm90
def test_full_size_flux_single_block_sparse_matches_simulate():
    """One FLUX.1 single-stream block at full size (hidden 3072, 4096 + 512 tokens): real K and N for every path."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    torch.manual_seed(0)
    block = FluxSingleTransformerBlock(dim=3072, num_attention_heads=24, attention_head_dim=128).cuda()
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0, 0.02)
    block = block.to(torch.bfloat16).eval()

    class Holder(nn.Module):  # a diffusers block compiled alone would be taken for one compiled regionally
        def __init__(self):
            super().__init__()
            self.block = block

        def forward(self, **inputs):
            return self.block(**inputs)

    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    inputs = dict(hidden_states=torch.randn(1, 4096, 3072, **bf16), encoder_hidden_states=torch.randn(1, 512, 3072,
                  **bf16), temb=torch.randn(1, 3072, **bf16))  # fmt: skip
    outputs, sparse_names = {}, []
    for execution in ("sparse", "simulate", "dense"):
        torch._dynamo.reset()
        options = {"execution": execution, "min_speedup": 1e-3, "include": sparse_names}
        with torch.no_grad(), lynx_compile.collect_reports() as report:
            outputs[execution] = torch.compile(Holder(), backend="lynx", fullgraph=True, options=options)(**inputs)[
                0].float()  # fmt: skip
        if execution == "sparse":
            sparse_names = [layer.name for layer in report.sparse_layers]
            assert len(sparse_names) >= 4  # to_q, to_k, to_v, proj_mlp, proj_out: K ∈ {3072, 15360}
            (proj_out,) = [layer for layer in report.sparse_layers if layer.name == "block.proj_out"]
            assert "input cat(none, gelu_tanh) pruned on load" in proj_out.reason, proj_out.reason

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    # One block: few mask flips can compound, so sparse and simulate agree far more closely than either with dense.
    assert rel(outputs["sparse"], outputs["simulate"]) < 0.1 * rel(outputs["simulate"], outputs["dense"])


@needs_sm90
@pytest.mark.parametrize("packed", [False, True], ids=["member-gemms", "packed"])
@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "no-graphs"])
def test_sibling_group_on_sparse_cores_matches_its_members_simulated_and_keeps_one_copy_of_the_weights(graphs, packed):
    """q, k, v (and an MLP-in) of one input: one compress, then four GEMMs, or (pack_siblings) one GEMM over the
    four weights packed in one buffer; each output equals that member simulated alone, across replays and after a
    weight changed in place; compiling adds no copy of the weights."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q, self.to_k, self.to_v = (nn.Linear(1024, 1024) for _ in range(3))
            self.proj_mlp = nn.Linear(1024, 4096, bias=False)

        def forward(self, h):
            return self.to_q(h), self.to_k(h), self.to_v(h), self.proj_mlp(h)

    block = Block().cuda().to(torch.bfloat16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in block.parameters())
    x = torch.randn(1000, 1024, device="cuda", dtype=torch.bfloat16)  # 1000 rows: padded to 1008 for the GEMMs
    with torch.no_grad():
        block(x)  # cuBLAS keeps a workspace per stream (~32 MB, measured): let the eager model allocate it
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    options = {**FORCE_SPARSE, "triton.cudagraphs": graphs, "pack_siblings": packed}
    if packed:  # the cuSPARSELt paths run a group as one GEMM; CUTLASS, which may measure faster, has no such mode
        from lynx_compile.paths import PATHS

        options["sparse_paths"] = [name for name in ("cusparselt", "cusparselt_planned") if name in PATHS]
    compiled = torch.compile(block, backend="lynx", options=options)
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        for _ in range(3):
            x = torch.randn_like(x)
            outs = [out.clone() for out in compiled(x)]
            for out, layer in zip(outs, (block.to_q, block.to_k, block.to_v, block.proj_mlp)):
                expected = sparse_linear(x, layer.weight, layer.bias)
                rel = (out.float() - expected.float()).norm() / expected.float().norm()
                assert rel < 1e-2, rel
    assert all(layer.siblings == ("to_q", "to_k", "to_v", "proj_mlp") for layer in report.layers), report
    layers = (block.to_q, block.to_k, block.to_v, block.proj_mlp)
    assert (adjacent_rows([layer.weight for layer in layers]) is not None) == packed  # one (7168, 1024) matrix
    with torch.no_grad():
        block.to_k.weight.mul_(-0.5)  # in place, after compiling (and capturing): the next call runs it
        outs = [out.clone() for out in compiled(x)]
        for out, layer in zip(outs, layers):
            expected = sparse_linear(x, layer.weight, layer.bias)
            assert (out.float() - expected.float()).norm() / expected.float().norm() < 1e-2
    del outs, out, expected
    torch.cuda.synchronize()
    if not graphs:  # CUDA graphs keep their pool of activations; the weights are what must not be copied
        # 1 MiB besides for what a path keeps per shape (a workspace, a plan's buffers: 394 KB seen): a copy of even
        # the smallest weight (2 MiB) is still over the bound
        smallest = min(layer.weight.numel() * layer.weight.element_size() for layer in layers)
        allowance = 0.02 * weight_bytes + (1 << 20)
        assert allowance < smallest and torch.cuda.memory_allocated() - before <= allowance


@needs_sm90
def test_autocast_runs_an_fp32_layer_on_sparse_cores_in_bf16():
    """Under autocast a sparsified fp32 layer casts like F.linear, so it is decided and run in bf16 on sparse cores."""
    layer = nn.Linear(1024, 2048).cuda().eval()
    x = torch.randn(512, 1024, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), lynx_compile.collect_reports() as report:
        out = torch.compile(layer, backend="lynx", options=FORCE_SPARSE)(x)
    (decision,) = report.layers
    assert out.dtype == torch.bfloat16 and "sparse tensor cores" in decision.reason, decision.reason
    with torch.no_grad():
        expected = sparse_linear(x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16())
    rel = (out.float() - expected.float()).norm() / expected.float().norm()
    assert rel < 1e-2, rel


@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["silu", "gelu_tanh"])
def test_gated_folding_compressor_is_bit_exact_with_cusparselt(name, dtype):
    """act(a)·b on load == cuSPARSELt's compression of the product the same loader writes out; that product is
    torch's to one rounding step (here Triton rounds to nearest, as torch does)."""
    from lynx_compile.folds import FoldSpec, assemble, compress, load
    from lynx_compile.kernels.prune_compress_24 import as_flat, compressed_numel

    rows, k = 1040, 10240
    a, b = torch.randn(rows, 2 * k, device="cuda", dtype=dtype).chunk(2, dim=-1)  # views, as proj(x).chunk(2)
    spec = FoldSpec("gated", (name,))
    ours, _ = compress([a, b], spec)
    written = load([a, b], spec)
    expected = torch._cslt_compress(nm_prune_ref(written)[0]).flatten()[: compressed_numel(rows, k)]
    assert torch.equal(as_flat(ours, rows, k).view(torch.int16), expected.view(torch.int16))
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    torch.testing.assert_close(written.float(), assemble([a, b], spec).float(), rtol=2 * ulp, atol=1e-5)


def test_regional_compilation_with_an_unalike_policy_runs_on_sparse_cores_as_the_whole_model_across_replays():
    """A tiny FLUX (1 double + 3 single blocks), bf16, execution="sparse" with CUDA graphs, compiled block by block
    with a policy that treats the single blocks unalike (block 0's `proj_out` dense, the model's own `proj_out`
    dense): the same decisions as whole-model compilation, one graph per decision pattern, no graph after the first
    step, and outputs that agree with the same regional compilation simulating exactly the layers that went on
    sparse cores, as closely as sparse agrees with simulate for the whole model
    (test_tiny_diffusers_model_sparse_matches_simulate). Whole-model and regional graphs fuse, and so round in bf16,
    differently: at this toy size that flips as many masks as pruning changes outputs (measured: 0.37 relative
    between the two simulated), so their outputs are compared exactly on the CPU instead
    (tests/test_regional_flux.py)."""
    import sys

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from zoo import ZOO, build_flux, output_tensor, to_cuda_bf16

    def model():
        return build_flux(3).cuda().to(torch.bfloat16)

    steps = [to_cuda_bf16(ZOO["flux"].make_inputs(seed)) for seed in range(3)]
    dense = {"single_transformer_blocks.0.proj_out", "proj_out"}
    policy = lynx_compile.Policy({name: lynx_compile.LayerPolicy("dense" if name in dense else "sparse", "by hand")
                                  for name, module in model().named_modules() if isinstance(module, nn.Linear)},
                                 "FluxTransformer2DModel")  # fmt: skip
    options = {**FORCE_SPARSE, "policy": policy, "triton.cudagraphs": True}

    def run(compiled, inputs):
        with torch.no_grad(), lynx_compile.collect_reports() as report:
            outs = []
            for step in inputs:
                torch.compiler.cudagraph_mark_step_begin()
                outs.append(output_tensor(compiled(**step)).float().clone())
        return outs, report

    torch._dynamo.reset()
    whole_outs, whole_report = run(torch.compile(model(), backend="lynx", options=options), steps)
    torch._dynamo.reset()
    regional_model = lynx_compile.compile_repeated_blocks(model(), options=options)
    first, report = run(regional_model, steps[:1])
    later, later_report = run(regional_model, steps[1:])
    assert not later_report.graphs  # every instance and step reuses its pattern's graph
    decided = {layer.name: layer.decision for layer in report.layers}
    expected = {layer.name: layer.decision for layer in whole_report.layers}
    assert decided == {name: expected[name] for name in decided}
    assert all(expected[name] == "dense" for name in set(expected) - set(decided))
    assert [decided[f"single_transformer_blocks.{i}.proj_out"] for i in range(3)] == ["dense", "sparse", "sparse"]
    assert all("sparse tensor cores" in layer.reason for layer in report.sparse_layers), report
    assert report.regions()["FluxSingleTransformerBlock"]["patterns"] == 2
    on_sparse_cores = {layer.name for layer in report.sparse_layers}  # the rest has no cuSPARSELt path (K = 16)
    simulate_policy = lynx_compile.Policy({name: lynx_compile.LayerPolicy(
        "sparse" if name in on_sparse_cores else "dense", "as it ran") for name in policy.layers}, policy.model_class)
    torch._dynamo.reset()
    simulated_model = lynx_compile.compile_repeated_blocks(model(), options={**options, "execution": "simulate",
                                                                              "policy": simulate_policy})
    simulated, _ = run(simulated_model, steps)
    eager = model()
    for out, reference, step in zip(first + later, simulated, steps):
        with torch.no_grad():
            dense_out = output_tensor(eager(**step)).float()

        def rel(a, b):
            return ((a - b).norm() / b.norm()).item()

        # s·x̃ rounded before the GEMM or after it flips near-ties in later masks: bounded by what pruning changes.
        assert rel(out, reference) < 0.5 * rel(reference, dense_out)


# ---- cuSPARSELt with cached plans (nvmath-python): 10 passed on an H200, 2026-11-26 -----------------------------

def _planned():
    from lynx_compile.paths import cusparselt_planned

    if not cusparselt_planned.available():
        pytest.skip("nvmath-python is not installed (lynx-compile[cuda])")
    return cusparselt_planned


@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, k, n", [(16, 64, 16), (4608, 3072, 3072), (1000, 3072, 12288), (14040, 5120, 5120)])
def test_planned_gemm_equals_torchs_and_builds_its_plan_once(rows, k, n, dtype):
    from lynx_compile.folds import IDENTITY

    planned = _planned()
    g = torch.Generator(device="cuda").manual_seed(rows + k)
    x = torch.randn(rows, k, device="cuda", dtype=dtype, generator=g)
    weight = torch.randn(n, k, device="cuda", dtype=dtype, generator=g) * k**-0.5
    operand, _ = torch.ops.lynx.prune_compress_24([x], IDENTITY.encode(), 16)
    algorithm = int(torch._cslt_sparse_mm_search(operand, weight.t()))
    expected = torch._cslt_sparse_mm(operand, weight.t(), alg_id=algorithm)
    built = planned.PLANS.built
    assert torch.equal(torch.ops.lynx.cslt_planned_mm(operand, weight, algorithm), expected)
    # One plan for the shape (none if an earlier test of this process built it), however many calls.
    assert planned.PLANS.built - built in (0, 1)
    built = planned.PLANS.built
    for _ in range(2):
        assert torch.equal(torch.ops.lynx.cslt_planned_mm(operand, weight, algorithm), expected)
    assert planned.PLANS.built == built
    graph, static = torch.cuda.CUDAGraph(), {}
    with torch.cuda.graph(graph):
        static["out"] = torch.ops.lynx.cslt_planned_mm(operand, weight, algorithm)
    x.copy_(torch.randn(x.shape, device="cuda", dtype=dtype, generator=g))  # new data, the same addresses
    operand.copy_(torch.ops.lynx.prune_compress_24([x], IDENTITY.encode(), 16)[0])
    graph.replay()
    assert torch.equal(static["out"], torch._cslt_sparse_mm(operand, weight.t(), alg_id=algorithm))


@needs_sm90
@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "no-graphs"])
def test_planned_path_runs_a_model_as_the_cusparselt_path_does(graphs):
    _planned()
    model = mlp(torch.bfloat16)
    x = torch.randn(2, 600, 256, device="cuda", dtype=torch.bfloat16)
    outputs = {}
    with torch.no_grad():
        for path in ("cusparselt", "cusparselt_planned"):
            torch._dynamo.reset()
            options = {"execution": "sparse", "min_speedup": 1e-3, "sparse_paths": [path],  # only this path
                       **({"triton.cudagraphs": True} if graphs else {})}  # fmt: skip
            with lynx_compile.collect_reports() as report:
                outputs[path] = torch.compile(model, backend="lynx", options=options)(x).clone()
            assert all(layer.path == path for layer in report.layers), report
    assert torch.equal(outputs["cusparselt"], outputs["cusparselt_planned"])


# ---- a step schedule under CUDA graphs --------------------------------------------------------------------------


@needs_sm90
def test_a_step_schedule_switches_between_its_captured_variants():
    """Blocks sparse at steps 1 and 3 only, CUDA graphs on: each step's output is that variant's, replay after
    replay, with no recompile once both variants have run. Each forward is marked as a new step of Inductor's
    CUDA-graph trees, as block-by-block graphs need with plain Inductor too (without the mark both raise "accessing
    tensor output of CUDAGraphs that has been overwritten" at the first forward; H200, RESULTS.md, session 17)."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(1024, 4096), nn.Linear(4096, 1024)

        def forward(self, x):
            return x + self.down(F.gelu(self.up(x)))

    class Stack(nn.Module):
        _repeated_blocks = ["Block"]

        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(2))

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    torch.compiler.reset()
    model = Stack().cuda().to(torch.bfloat16).eval()
    x = torch.randn(2, 512, 1024, device="cuda", dtype=torch.bfloat16)
    schedule = lynx_compile.StepSchedule(sparse_steps=[1, 3])
    lynx_compile.compile_repeated_blocks(model, options={**FORCE_SPARSE, "triton.cudagraphs": True}, steps=schedule)
    with torch.no_grad():
        torch.compiler.cudagraph_mark_step_begin()
        dense = model.forward(x).float()
        outs = {}
        for round_ in range(3):
            for step in range(4):
                schedule.at(step)
                torch.compiler.cudagraph_mark_step_begin()
                out = model(x).float()
                if round_ == 0:
                    outs[step] = out
                else:
                    torch.testing.assert_close(out, outs[step])  # the same variant, replayed
            if round_ == 0:
                graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    for step, out in outs.items():
        if step in (1, 3):
            assert rel(out, dense) > 1e-2  # pruned
        else:
            assert rel(out, dense) < 1e-2  # Inductor dense: bf16 rounding only
