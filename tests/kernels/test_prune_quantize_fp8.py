"""The fused 2:4 prune + rowwise e4m3 quantization + compress kernel (and its dense twin) against the pure-torch
references, bit for bit, on awkward inputs."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lynx_compile.fp8 import quantize_rows
from lynx_compile.folds import IDENTITY, FoldSpec, compress_fp8, loading, quantize_fp8
from lynx_compile.kernels import quantize_fp8_single_pass as single_pass
from lynx_compile.kernels import row_blocking
from lynx_compile.kernels.activations import activate
from lynx_compile.kernels.cutlass_layout import decompress_24_ref
from lynx_compile.kernels.e4m3 import hardware_cast
from lynx_compile.kernels.nm_prune import nm_prune_ref
from lynx_compile.kernels.prune_compress_24 import metadata_bytes
from lynx_compile.kernels.prune_quantize_fp8 import (
    prune_quantize_compress_fp8,
    prune_quantize_compress_fp8_ref,
    quantize_rows_fp8,
)

from group_patterns import every_group

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@st.composite
def activations(draw, max_rows=100, max_k_tiles=3):
    rows = draw(st.integers(1, max_rows))
    k = 128 * draw(st.integers(1, max_k_tiles))
    dtype = draw(st.sampled_from([torch.bfloat16, torch.float16]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    # rows of very different magnitudes (each its own scale), some so small that kept values round to e4m3's
    # subnormals or to zero
    magnitude = 10.0 ** torch.randint(-6, 3, (rows, 1), generator=generator).float()
    x = torch.randn(rows, k, generator=generator) * magnitude
    if draw(st.booleans()):  # exact ties, zeros (-0.0 too) and whole zero rows
        x = torch.randint(-2, 3, (rows, k), generator=generator).float() * draw(st.sampled_from([1.0, -0.0]))
    if draw(st.booleans()):  # a row so small that 448 / amax overflows fp32 (in bf16; in fp16 it rounds to zero),
        # its values fp32 normals (Triton's interpreter misreads bf16 subnormals: RESULTS.md, session 28)
        x[0] = torch.sign(x[0]) * (1 + torch.rand(k, generator=generator)) * 10.0 ** -draw(st.integers(36, 37))
    x = x.to(dtype=dtype, device=DEVICE)
    if draw(st.booleans()):
        x = x.t().contiguous().t()
    return x


def activation_rows(rows, k, dtype):
    """Rows of random magnitudes with ties, zeros and a NaN/inf row."""
    generator = torch.Generator().manual_seed(rows * k)
    x = torch.randn(rows, k, generator=generator) * 10.0 ** torch.randint(-4, 3, (rows, 1), generator=generator)
    x[0, :64] = torch.randint(-2, 3, (64,), generator=generator).float()
    x[1, 7], x[1, 100] = float("nan"), float("inf")
    return x.to(dtype=dtype, device=DEVICE)


def bits(t):
    return t.view(torch.uint8)


# single_pass=None takes the one-pass kernel wherever it reads X (here: the row-major draws), False the general one
@settings(max_examples=30)
@given(activations(), st.booleans(), st.sampled_from([None, False]))
def test_kernel_matches_reference_bit_for_bit(x, norm_compensation, single_pass):
    values, metadata, scale = prune_quantize_compress_fp8(x, norm_compensation=norm_compensation,
                                                          single_pass=single_pass)  # fmt: skip
    ref_values, ref_metadata, ref_scale = prune_quantize_compress_fp8_ref(x, norm_compensation)
    assert values.dtype == torch.float8_e4m3fn and values.shape == (x.shape[0], x.shape[1] // 2)
    assert torch.equal(bits(values), bits(ref_values)) and torch.equal(metadata, ref_metadata)
    # the norm scale sums over K in another order than torch's: equal to the last fp32 bits
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("single_pass", [None, False])
def test_every_group_pattern_is_stored_as_the_reference(dtype, single_pass):
    """Kept members that are zero, -0.0 or round to zero, at every pair of positions (`every_group`)."""
    x = every_group(dtype, DEVICE)
    values, metadata, _ = prune_quantize_compress_fp8(x, norm_compensation=True, single_pass=single_pass)
    ref_values, ref_metadata, _ = prune_quantize_compress_fp8_ref(x, True)
    assert torch.equal(bits(values), bits(ref_values)) and torch.equal(metadata, ref_metadata)
    # kept members that round to zero (+0 or -0) keep their slots: the operand is the quantized pruned rows, bit for
    # bit, and such members are there beside nonzero ones
    pruned, _ = nm_prune_ref(x.float(), 2, 4)
    assert torch.equal(bits(decompress_24_ref(values, metadata)), bits(quantize_rows(pruned)[0]))
    kept_codes = bits(ref_values).reshape(len(x), -1, 2)[:, :30]
    assert ((kept_codes[..., 0] == 0x80) & (kept_codes[..., 1] & 0x7F != 0)).any()
    assert ((kept_codes[..., 0] & 0x7F != 0) & (kept_codes[..., 1] == 0)).any()


@settings(max_examples=30)
@given(activations(), st.sampled_from([None, False]))
def test_dense_quantization_matches_reference_bit_for_bit(x, single_pass):
    quantized, scale = quantize_rows_fp8(x, single_pass=single_pass)
    ref_quantized, ref_scale = quantize_rows(x)
    assert torch.equal(bits(quantized), bits(ref_quantized)) and torch.equal(scale, ref_scale.reshape(-1))


@settings(max_examples=20)
@given(activations(max_rows=40))
def test_the_operand_dequantizes_to_the_pruned_rows_within_e4m3_precision(x):
    """Without the references' code path: per element, the decompressed e4m3 operand times the row's quantization
    scale is x̃ within half an e4m3 step (2⁻⁴ relative, or half the subnormal step 2⁻⁹ of the scale), zero where x̃
    is, and the scale is amax(|x̃|) / 448 (amax taken at least 2⁻¹¹⁷, where 448 / amax is finite)."""
    values, metadata, quantization_scale = prune_quantize_compress_fp8(x, norm_compensation=False)
    pruned, _ = nm_prune_ref(x.float(), 2, 4)
    dequantized = decompress_24_ref(values, metadata).float() * quantization_scale[:, None]
    tolerance = torch.maximum(pruned.abs() * 2**-4, quantization_scale[:, None] * 2**-10)
    assert ((dequantized - pruned).abs() <= tolerance * 1.0001).all()
    assert (dequantized[pruned == 0] == 0).all()
    amax = pruned.abs().amax(dim=1)
    assert torch.equal(quantization_scale, torch.where(amax > 0, amax.clamp(min=2**-117) / 448, torch.ones_like(amax)))
    assert not values.float().isnan().any()  # a tiny row's zeros times an overflowed 448 / amax were NaN


@pytest.mark.parametrize("value", [127.35, -31.55, 7.96, 0.0013, -0.0, 448.0, 2**-9 * 0.5, 2**-9 * 0.5001])
def test_rounding_matches_torchs_cast_where_the_interpreters_does_not(value):
    """Values just below a power of two round up across it, ties go to even (2⁻¹⁰ → 0), signs stay (-0.0): row
    [value, 448] fixes the scale to 1."""
    x = torch.tensor([[value, 448.0] + [0.0] * 126], dtype=torch.float32, device=DEVICE).to(torch.bfloat16)
    quantized, _ = quantize_rows_fp8(x)
    assert bits(quantized)[0, 0] == bits(x[:, :1].float().to(torch.float8_e4m3fn))[0, 0]


@pytest.mark.parametrize("setting", ["1", "true", "0", "false", ""])
def test_the_kernels_round_as_triton_runs_them_however_the_interpreter_is_asked_for(setting):
    # the kernels pick the GPU's instructions (cast, packed maxima, approximate division) by `hardware_cast`, which
    # must say what `triton.jit` made of them: under TRITON_INTERPRET=false they are compiled, not interpreted
    probe = ("import triton; from lynx_compile.kernels.e4m3 import hardware_cast; "
             "from lynx_compile.kernels.activations import COMPILED; "
             "print(hardware_cast(), bool(COMPILED), bool(triton.knobs.runtime.interpret))")
    env = {**os.environ, "TRITON_INTERPRET": setting}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    compiled, constant, interpreted = out.split()
    assert compiled == constant == str(interpreted == "False")


@pytest.mark.parametrize("single_pass", [None, False])
def test_a_non_finite_row_keeps_its_non_finite_values_to_itself(single_pass):
    x = torch.randn(8, 128, dtype=torch.bfloat16, device=DEVICE)
    x[2, 5], x[5, 9] = float("nan"), float("inf")
    values, metadata, scale = prune_quantize_compress_fp8(x, single_pass=single_pass)
    ref_values, ref_metadata, ref_scale = prune_quantize_compress_fp8_ref(x)
    finite = [0, 1, 3, 4, 6, 7]
    assert torch.equal(bits(values)[finite], bits(ref_values)[finite]) and torch.equal(metadata, ref_metadata)
    torch.testing.assert_close(scale[finite], ref_scale[finite], rtol=1e-5, atol=0)
    assert values[2].float().isnan().any() and values[5].float().isnan().any()  # inf / inf in the row's scale


@settings(max_examples=10)
@given(activations(max_rows=40, max_k_tiles=2), st.sampled_from(["gelu", "gelu_tanh"]))
def test_a_folded_activation_equals_quantizing_its_written_out_output(x, name):
    """The activation fold applied on load == the kernels on act(x) written out by the same code (the one-pass
    kernel for a row-major x, the general one otherwise; the norm scale's sums run in each kernel's order)."""
    fold = FoldSpec("activation", (name,))
    values, metadata, scale = compress_fp8([x], fold)
    ref_values, ref_metadata, ref_scale = prune_quantize_compress_fp8(activate(x, name))
    assert torch.equal(bits(values), bits(ref_values)) and torch.equal(metadata, ref_metadata)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)
    quantized, row_scale = quantize_fp8([x], fold)
    ref_quantized, ref_row_scale = quantize_rows_fp8(activate(x, name))
    assert torch.equal(bits(quantized), bits(ref_quantized)) and torch.equal(row_scale, ref_row_scale)


@pytest.mark.parametrize("pieces", [("none", "gelu_tanh"), ("silu", "none"), ("gelu", "gelu")])
@pytest.mark.parametrize("single_pass", [None, False])
def test_a_folded_concatenation_equals_quantizing_its_written_out_output(pieces, single_pass):
    """FLUX's single block: x = cat(attention, gelu(mlp)) made on load by either kernel == x written out."""
    head, tail = activation_rows(9, 128, torch.bfloat16), activation_rows(9, 256, torch.bfloat16)
    fold = FoldSpec("concat", pieces)
    operands, loader = loading([head, tail], fold)
    written = torch.cat([activate(head, pieces[0]) if pieces[0] != "none" else head,
                         activate(tail, pieces[1]) if pieces[1] != "none" else tail], dim=-1)  # fmt: skip
    values, metadata, scale = prune_quantize_compress_fp8(operands, loader, single_pass=single_pass)
    ref_values, ref_metadata, ref_scale = prune_quantize_compress_fp8(written, single_pass=single_pass)
    assert torch.equal(bits(values), bits(ref_values)) and torch.equal(metadata, ref_metadata)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0, equal_nan=True)
    quantized, row_scale = quantize_rows_fp8(operands, loader, single_pass=single_pass)
    ref_quantized, ref_row_scale = quantize_rows_fp8(written, single_pass=single_pass)
    assert torch.equal(bits(quantized), bits(ref_quantized)) and torch.equal(row_scale, ref_row_scale)


@settings(max_examples=14)
@given(rows=st.integers(2, 9), head_chunks=st.integers(1, 2), tail_chunks=st.integers(1, 2),  # a NaN row and a tie row
       pieces=st.sampled_from([("none", "gelu_tanh"), ("silu", "none")]), prune=st.booleans(),
       held_pairs=st.sampled_from([64, 0]), raw_max=st.sampled_from([None, True]))  # fmt: skip
def test_pieces_through_different_activations_a_chunk_at_a_time_as_the_general_kernel(
        rows, head_chunks, tail_chunks, pieces, prune, held_pairs, raw_max):  # fmt: skip
    """Where the head piece is whole chunks, the one-pass kernel reads each chunk through its own piece's activation
    alone (HEAD_CHUNKS), its chunks kept in registers or read twice, the first look at a held row as `planned`
    decides (rows this short: every statistic, pruned; the largest magnitude alone, dense) or its largest magnitude
    alone: the general kernel's bits and scales."""
    head = activation_rows(rows, 128 * head_chunks, torch.bfloat16)
    tail = activation_rows(rows, 128 * tail_chunks, torch.bfloat16)
    operands, loader = loading([head, tail], FoldSpec("concat", pieces))
    k = loader.width
    values = torch.empty(rows, k // 2 if prune else k, dtype=torch.float8_e4m3fn, device=DEVICE)
    metadata = torch.empty(metadata_bytes(rows, k), dtype=torch.uint8, device=DEVICE)
    blocks = (1, 16, head_chunks + tail_chunks)  # 16 pairs of groups a chunk: the head is `head_chunks` of them
    planned = single_pass.planned(operands, loader, prune, True, hardware_cast(), blocks=blocks, held_pairs=held_pairs,
                                  raw_max=raw_max)  # fmt: skip
    assert planned.arguments["HEAD_CHUNKS"] == head_chunks and planned.arguments["HELD"] == (held_pairs > 0)
    assert planned.arguments["RAW_MAX"] == (raw_max or held_pairs == 0 or not prune)
    scale = single_pass.launch(operands, loader, values, metadata, prune, True, hardware_cast(), blocks=blocks,
                               held_pairs=held_pairs, raw_max=raw_max)  # fmt: skip
    if prune:
        general = prune_quantize_compress_fp8(operands, loader, single_pass=False)
        assert torch.equal(bits(values), bits(general[0])) and torch.equal(metadata, general[1])
        torch.testing.assert_close(scale, general[2], rtol=1e-5, atol=0, equal_nan=True)
    else:
        quantized, row_scale = quantize_rows_fp8(operands, loader, single_pass=False)
        assert torch.equal(bits(values), bits(quantized)) and torch.equal(scale, row_scale.reshape(-1))


@st.composite
def rows_around_the_negative_peak(draw, rows=6):
    """Rows whose largest |act(x)| lies on either side of the activations' bound for negative x, or comes from a
    negative x, or is not finite: every row the first read's candidate holds for, and every one it does not."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    k = 8 * 16 * draw(st.integers(2, 3))  # 2-3 chunks of 16 pairs of groups
    x = torch.randn(rows, k, generator=generator)
    x[0] *= draw(st.sampled_from([30.0, 1.0]))
    x[1] = -x[1].abs() * draw(st.sampled_from([0.5, 1.3, 80.0]))  # all negative: |act| ≤ its peak
    x[2] *= draw(st.sampled_from([0.1, 0.15, 0.3]))  # around GELU's bound
    x[3] = x[3] * 0.01 + draw(st.sampled_from([0.0, 0.25, 0.5]))
    x[4, draw(st.integers(0, k - 1))] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e4]))
    x[5] = draw(st.sampled_from([0.0, -0.0, 0.2]))  # a constant row
    return x.to(dtype=draw(st.sampled_from([torch.bfloat16, torch.float16])), device=DEVICE)


@settings(max_examples=12, deadline=None)
@given(rows_around_the_negative_peak(), st.sampled_from(["gelu", "gelu_tanh", "silu"]), st.booleans(), st.booleans())
def test_a_row_in_chunks_takes_its_largest_magnitude_from_before_the_activation(x, name, prune, held):
    """One activation on load, a row in chunks, read twice or held in registers: the first look finds the largest
    |act(x)| from the largest x (`RAW_MAX`) where that is sure, and reads the row again through the activation where
    it is not: either way the general kernel's bits (the norm scale's sum in another order: its last bits)."""
    rows, k = x.shape
    operands, loader = loading([x], FoldSpec("activation", (name,)))
    values = torch.empty(rows, k // 2 if prune else k, dtype=torch.float8_e4m3fn, device=DEVICE)
    metadata = torch.empty(metadata_bytes(rows, k), dtype=torch.uint8, device=DEVICE)
    blocks, held_pairs = (1, 16, k // 128), k // 8 if held else 0
    # (rows this short held take every statistic first where `planned` decides: `raw_max` asks for the magnitude)
    planned = single_pass.planned(operands, loader, prune, True, hardware_cast(), blocks=blocks,
                                  held_pairs=held_pairs, raw_max=True)  # fmt: skip
    assert planned.arguments["RAW_MAX"] and planned.arguments["HELD"] == held
    scale = single_pass.launch(operands, loader, values, metadata, prune, True, hardware_cast(), blocks=blocks,
                               held_pairs=held_pairs, raw_max=True)  # fmt: skip
    if prune:
        general = prune_quantize_compress_fp8(operands, loader, single_pass=False)
        finite = general[2].isfinite()
        assert torch.equal(bits(values)[finite], bits(general[0])[finite]) and torch.equal(metadata, general[1])
        torch.testing.assert_close(scale, general[2], rtol=1e-5, atol=0, equal_nan=True)
    else:
        quantized, row_scale = quantize_rows_fp8(operands, loader, single_pass=False)
        finite = row_scale.reshape(-1).isfinite()
        assert torch.equal(bits(values)[finite], bits(quantized)[finite])
        assert torch.equal(scale[finite], row_scale.reshape(-1)[finite])


@pytest.mark.parametrize("prune", [True, False])
def test_the_one_pass_kernel_chunks_flux_concatenation_so_that_its_head_is_whole_chunks(prune):
    """At its own blocking the FP8 kernel takes chunks small enough for the attention's 3072 columns to be whole
    chunks (128 pairs of groups, not its 256 or 512), so that each chunk goes through one activation."""
    inputs = [torch.empty(4, 3072, dtype=torch.bfloat16), torch.empty(4, 12288, dtype=torch.bfloat16)]
    mixed = single_pass.planned(*loading(inputs, FoldSpec("concat", ("none", "gelu_tanh"))), prune, True, True)
    assert (mixed.arguments["PAIRS"], mixed.arguments["HEAD_CHUNKS"]) == (128, 3)
    same = single_pass.planned(*loading(inputs, FoldSpec("concat", ("gelu_tanh", "gelu_tanh"))), prune, True, True)
    assert same.arguments["PAIRS"] > 128 and same.arguments["HEAD_CHUNKS"] == 0


@pytest.mark.parametrize("held_pairs", [64, 0])  # the row's chunks kept in registers, or each read twice
@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_one_pass_kernel_in_chunks_matches_the_reference(prune, dtype, held_pairs):
    """A row in chunks, the last one partly past K, kept in registers or read twice (statistics, then values): the
    same bits. (Few cases: a program per row, slow under the interpreter.)"""
    x = activation_rows(5, 384, dtype)  # 48 pairs of groups a row: 2 chunks of 32
    x = x.contiguous()
    rows, k = x.shape
    values = torch.empty(rows, k // 2 if prune else k, dtype=torch.float8_e4m3fn, device=DEVICE)
    metadata = torch.empty(metadata_bytes(rows, k), dtype=torch.uint8, device=DEVICE)
    operands, loader = loading([x], IDENTITY)
    scale = single_pass.launch(operands, loader, values, metadata, prune, True, hardware_cast(), blocks=(1, 32, 2),
                               held_pairs=held_pairs)  # fmt: skip
    if prune:
        ref_values, ref_metadata, ref_scale = prune_quantize_compress_fp8_ref(x)
        assert torch.equal(bits(values), bits(ref_values)) and torch.equal(metadata, ref_metadata)
        torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)
    else:
        ref_values, ref_scale = quantize_rows(x)
        assert torch.equal(bits(values), bits(ref_values)) and torch.equal(scale, ref_scale.reshape(-1))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 4096), min_size=1, max_size=2), st.sampled_from(["none", "gelu_tanh"]),
       st.booleans())  # fmt: skip
def test_the_chosen_blocking_covers_a_row_and_gives_each_thread_its_own_pairs(widths, tail, prune):
    """For any row (one piece, or two through different activations), the blocking `planned` chooses reads the
    whole row, and no two threads of a program hold the same pair of groups; pruning a row in several chunks, a
    thread holds one pair a chunk where the row is read twice or held in `held_blocks`' chunks, which are then at
    most `held_chunks`, padded at most an eighth of the row, the head whole chunks."""
    pieces = [torch.empty(2, 8 * width, dtype=torch.bfloat16) for width in widths]
    one_piece = IDENTITY if tail == "none" else FoldSpec("activation", (tail,))
    spec = FoldSpec("concat", ("none", tail)) if len(pieces) == 2 else one_piece
    operands, loader = loading(pieces, spec)
    arguments = single_pass.planned(operands, loader, prune, True, False).arguments
    rows, pairs, chunks, warps = (arguments[key] for key in ("ROWS", "PAIRS", "CHUNKS", "num_warps"))
    row_pairs = arguments["K"] // 8
    assert chunks * pairs >= row_pairs and (chunks == 1 or rows == 1)
    assert 32 * warps <= rows * pairs
    held_in = row_blocking.held_blocks(operands, loader, single_pass.HELD_PAIRS)
    if prune and chunks > 1 and (held_in is not None or not arguments["HELD"]):
        assert pairs == 32 * warps
    if prune and chunks > 1 and arguments["HELD"] and held_in is not None:
        assert (1, pairs, chunks) == held_in and chunks <= row_blocking.held_chunks(row_pairs)
        assert chunks * pairs - row_pairs <= row_pairs // 8
        assert len(pieces) == 1 or tail == "none" or arguments["HEAD_CHUNKS"] > 0


# the blockings `held_blocks` and `planned` choose where they were measured fastest (an H200 at 4608 rows,
# benchmarks/RESULTS.md, sessions 30 and 32): (chunks, pairs a chunk, warps, held, the first look at the largest
# magnitude alone)
MEASURED_CHOICES = {1152: (5, 32, 1, True, False), 1536: (6, 32, 1, True, False), 3072: (6, 64, 2, True, False),
                    4096: (8, 64, 2, True, True), 4608: (9, 64, 2, True, True), 5120: (10, 64, 2, True, True),
                    8192: (8, 128, 4, True, True), 12288: (6, 256, 8, False, True)}  # fmt: skip


@pytest.mark.parametrize("k", sorted(MEASURED_CHOICES))
def test_a_pruned_row_in_chunks_takes_the_blocking_measured_fastest(k):
    operands, loader = loading([torch.empty(2, k, dtype=torch.bfloat16)], IDENTITY)
    arguments = single_pass.planned(operands, loader, True, True, False).arguments
    assert tuple(arguments[key] for key in ("CHUNKS", "PAIRS", "num_warps", "HELD", "RAW_MAX")) == MEASURED_CHOICES[k]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 2048), st.sampled_from(["none", "gelu_tanh"]), st.booleans())
def test_a_held_row_looks_first_at_every_statistic_only_where_it_is_pruned_and_short(row_pairs, name, prune):
    """The first look at a row takes its largest magnitude alone wherever the row is read twice, quantized without
    pruning, or, pruned, held longer than `STATISTICS_FIRST_PAIRS` pairs of groups, and every statistic at any other
    held row; `raw_max` True or False forces either."""
    operands, loader = loading([torch.empty(2, 8 * row_pairs, dtype=torch.bfloat16)],
                               FoldSpec("activation", (name,)) if name != "none" else IDENTITY)  # fmt: skip
    arguments = single_pass.planned(operands, loader, prune, True, False).arguments
    magnitude_first = not arguments["HELD"] or not prune or row_pairs > row_blocking.STATISTICS_FIRST_PAIRS
    assert arguments["RAW_MAX"] == magnitude_first
    assert single_pass.planned(operands, loader, prune, True, False, raw_max=True).arguments["RAW_MAX"]
    assert not single_pass.planned(operands, loader, prune, True, False, raw_max=False).arguments["RAW_MAX"]


# held in 5 chunks of 32 pairs (one warp), 5, 6 and 9 of 64 (two warps; `held_blocks`), the last its magnitude first
@pytest.mark.parametrize("k", [1152, 2560, 3072, 4608])
def test_the_one_pass_kernel_holds_a_row_of_chunks_where_a_whole_block_would_be_padding(k):
    x = activation_rows(3, k, torch.bfloat16)
    arguments = single_pass.planned(*loading([x], IDENTITY), True, True, hardware_cast()).arguments
    assert arguments["CHUNKS"] > 1 and arguments["HELD"]
    values, metadata, scale = prune_quantize_compress_fp8(x)
    ref_values, ref_metadata, ref_scale = prune_quantize_compress_fp8_ref(x)
    assert torch.equal(bits(values), bits(ref_values)) and torch.equal(metadata, ref_metadata)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)


@given(st.integers(1, 4096), st.sampled_from([64, 256, 512, 1024]))
def test_the_one_pass_blocks_cover_a_row_with_little_padding(row_pairs, pairs_per_program):
    block_rows, pairs, chunks = row_blocking.row_blocks(row_pairs, pairs_per_program)
    assert pairs & (pairs - 1) == 0 and block_rows * pairs <= max(pairs_per_program, 16) and chunks * pairs >= row_pairs
    if chunks == 1:  # whole rows, short or little padded: as many as fill the program, at most a metadata tile's 64
        assert pairs < 2 * row_pairs and block_rows == min(64, pairs_per_program // pairs)
        assert pairs <= row_blocking.SMALL_ROW_PAIRS or pairs - row_pairs <= row_pairs // 10
    else:  # one row in chunks: the padding is at most a tenth, or the chunks are a warp's 32 pairs
        assert block_rows == 1 and pairs >= 32 and (chunks * pairs - row_pairs <= row_pairs // 10 or pairs == 32)


def test_the_one_pass_kernel_says_what_it_cannot_read():
    x = torch.randn(128, 64, dtype=torch.bfloat16, device=DEVICE).t()  # column-major
    with pytest.raises(ValueError, match="one-pass"):
        prune_quantize_compress_fp8(x, single_pass=True)


@pytest.mark.parametrize("shape, dtype, message", [
    ((4, 64), torch.bfloat16, "multiple of 128"),
    ((4, 128), torch.float32, "implemented for"),
    ((4, 2, 128), torch.bfloat16, "2-D"),
])  # fmt: skip
def test_bad_input_is_a_clear_error(shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        prune_quantize_compress_fp8(torch.ones(shape, dtype=dtype, device=DEVICE))


def test_empty_input():
    values, metadata, scale = prune_quantize_compress_fp8(torch.ones(0, 256, dtype=torch.bfloat16, device=DEVICE))
    assert values.shape == (0, 128) and metadata.numel() == 0 and scale.shape == (0,)
