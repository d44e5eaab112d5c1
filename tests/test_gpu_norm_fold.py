"""GPU checks of the norm fold (`folds/norm.py`, `pytest -m gpu`): the compiled loader against the compressor on the
x it writes out, in all three compressed layouts, and a modulated block on sparse tensor cores against simulate."""

import pytest
import torch
from test_norm_fold import ModulatedBlock, norm_inputs

import lynx_compile
from lynx_compile.folds import FoldSpec, assemble, compress, compress_cutlass, compress_fp8, load
from lynx_compile.kernels.nm_prune import nm_prune_ref
from lynx_compile.kernels.prune_compress_24 import as_flat, compressed_numel, prune_compress_24_cutlass
from lynx_compile.kernels.prune_quantize_fp8 import prune_quantize_compress_fp8

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
needs_sm90 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                                reason="cuSPARSELt's sm_90 layout")  # fmt: skip

CASES = [  # (kind, affine, scaled, shifted, per)
    ("layer", "none", "one_plus_a", True, "sample"),  # FLUX, SD3, Qwen-Image, Wan: norm(t) · (1 + scale) + shift
    ("layer", "wb", "none", False, "all"),  # Wan's cross-attention norm
    ("rms", "w", "a", False, "row"),  # RMSNorm times a per-token scale
    ("rms", "none", "none", True, "all"),
]


@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(map(str, case)))
@pytest.mark.parametrize("batch, tokens, k", [(1, 37, 64), (2, 1000, 3072), (1, 4096, 5120)])
def test_norm_on_load_is_bit_exact_with_the_compressors_on_the_written_out_x(batch, tokens, k, case, dtype):
    kind, affine, scaled, shifted, per = case
    g = torch.Generator().manual_seed(batch * tokens + k)
    inputs = [tensor.cuda() for tensor in norm_inputs(g, batch, tokens, k, dtype, kind, affine, scaled != "none",
                                                      shifted, per)]  # fmt: skip
    spec = FoldSpec("norm", (kind, affine, scaled, "c" if shifted else "none"))
    rows = batch * tokens
    written = load(inputs, spec)
    operand, _ = compress(inputs, spec, pad_rows_to=16)  # cuSPARSELt's compressor takes rows in sixteens
    stored = -(-rows // 16) * 16
    padded = torch.cat([nm_prune_ref(written)[0], written.new_zeros(stored - rows, k)])
    expected = torch._cslt_compress(padded).flatten()[: compressed_numel(stored, k)]
    assert torch.equal(as_flat(operand, stored, k).view(torch.int16), expected.view(torch.int16))
    values, metadata, scale = compress_cutlass(inputs, spec)
    want = prune_compress_24_cutlass(written)
    assert torch.equal(values.view(torch.int16), want[0].view(torch.int16)) and torch.equal(metadata, want[1])
    torch.testing.assert_close(scale, want[2], rtol=1e-5, atol=0)
    if dtype == torch.bfloat16 and k % 128 == 0:  # the FP8 kernel's tile K
        (values8, metadata8, scale8), want8 = compress_fp8(inputs, spec), prune_quantize_compress_fp8(written)
        assert torch.equal(values8.view(torch.uint8), want8[0].view(torch.uint8)) and torch.equal(metadata8, want8[1])
        torch.testing.assert_close(scale8, want8[2], rtol=1e-5, atol=0)  # the norm scale's sums: another order
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    reference = assemble(inputs, spec).reshape(rows, k).float()
    torch.testing.assert_close(written.float(), reference, rtol=ulp, atol=1e-3)


@needs_sm90
@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "no-graphs"])
def test_a_modulated_block_with_its_norms_folded_runs_on_sparse_cores_as_simulated(graphs):
    """q/k/v (a group) and the MLP's up-projection with their modulated norms folded, on every sparse path the
    speed rule may take, equal to the simulate path within bf16 mask flips, across replays."""
    torch.manual_seed(0)
    block = ModulatedBlock(dim=1024).cuda().to(torch.bfloat16).eval()
    x, emb = torch.randn(2, 600, 1024, device="cuda", dtype=torch.bfloat16), torch.randn(2, 1024, device="cuda",
                                                                                        dtype=torch.bfloat16)  # fmt: skip
    options = {"execution": "sparse", "min_speedup": 1e-6, "min_tokens": 1, "triton.cudagraphs": graphs}
    with lynx_compile.collect_reports() as report:
        compiled = torch.compile(block, backend="lynx", options=options)
        with torch.no_grad():
            compiled(x, emb)
    reasons = {layer.name: layer.reason for layer in report.layers}
    assert "layer_norm·(1+a)+c" in reasons["up"] and "layer_norm·(1+a)+c" in reasons["to_q"], reasons
    simulate = torch.compile(block, backend="lynx", options={"execution": "simulate", "min_tokens": 1})
    dense = torch.compile(block, backend="lynx", options={"execution": "dense"})

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    with torch.no_grad():
        for _ in range(3):
            x = torch.randn_like(x)
            out, expected = compiled(x, emb).clone(), simulate(x, emb)
            # x made on load and x written by Inductor differ in the last bit of some elements (their statistics
            # and fused multiply-adds), which flips near-ties in the masks: bounded by what pruning itself changes,
            # as for the tiny diffusers models (a wrong row, sample or layout would be O(1)).
            assert rel(out, expected) < 0.5 * rel(expected, dense(x, emb))
