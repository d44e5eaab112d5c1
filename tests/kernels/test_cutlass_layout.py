"""The CUTLASS operand layout: the Triton compressor (interpreter on CPU) against the pure-torch encoder, the encoder's
rules, and — where nvcc and CUTLASS's headers are installed — the address formula against the layout the built
kernel library reads (a compile of one configuration: also the check that the kernel source builds)."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lynx_compile.folds import IDENTITY, FoldSpec, compress_cutlass, loading
from lynx_compile.kernels import cutlass_gemm
from lynx_compile.kernels import prune_compress_24_single_pass as one_pass
from lynx_compile.kernels.cutlass_gemm import CONFIGS, FP8_CONFIGS, GemmConfig
from lynx_compile.kernels.cutlass_layout import (
    compress_24_ref,
    decompress_24_ref,
    metadata_nibble_address,
    metadata_nibbles,
    prune_compress_24_ref,
    sparse_mm_ref,
    stored_indices_ref,
)
from lynx_compile.kernels.nm_prune import nm_keep_mask_ref, nm_prune_ref
from lynx_compile.kernels.prune_compress_24 import Loader, load_tile, metadata_bytes, prune_compress_24_cutlass

from group_patterns import every_group
from test_prune_compress_24 import DEVICE, activations, bits


# single_pass=None takes the one-launch kernel wherever it reads X (the row-major draws), False the general one
# (`prune_compress_24_cutlass`)
@pytest.mark.parametrize("single_pass", [None, False])
@given(x=activations())
def test_compressor_matches_the_reference_bit_for_bit(x, single_pass):
    values, metadata, scale = compress_cutlass([x], IDENTITY, single_pass=single_pass)
    ref_values, ref_metadata, ref_scale = prune_compress_24_ref(x)
    assert values.shape == (x.shape[0], x.shape[1] // 2) and metadata.shape == (metadata_bytes(*x.shape),)
    assert torch.equal(bits(values), bits(ref_values))
    assert torch.equal(metadata, ref_metadata)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("single_pass", [None, False])
def test_compressor_stores_every_group_pattern_as_the_reference(dtype, single_pass):
    x = every_group(dtype, DEVICE)
    values, metadata, _ = compress_cutlass([x], IDENTITY, single_pass=single_pass)
    ref_values, ref_metadata, _ = prune_compress_24_ref(x)
    assert torch.equal(bits(values), bits(ref_values)) and torch.equal(metadata, ref_metadata)


@given(activations())
def test_cutlass_rule_decompresses_to_the_pruned_matrix_but_for_negative_zeros(x):
    pruned, _ = nm_prune_ref(x)
    without_negative_zeros = torch.where(pruned == 0, torch.zeros_like(pruned), pruned)  # stored as +0
    assert torch.equal(bits(decompress_24_ref(*compress_24_ref(pruned))), bits(without_negative_zeros))


@given(activations())
def test_the_operand_stores_the_kept_members_where_they_are(x):
    """lynx's operand: the slots are exactly the members the rank rule keeps (zeros and -0.0 among them), so it
    decompresses to the pruned matrix bit for bit; the metadata of the padding rows past M is empty groups."""
    values, metadata, _ = prune_compress_24_ref(x)
    pruned, _ = nm_prune_ref(x)
    assert torch.equal(bits(decompress_24_ref(values, metadata)), bits(pruned))
    x, metadata = x.cpu(), metadata.cpu()
    rows, k = x.shape
    padded = -(-rows // 64) * 64
    nibble = metadata_nibbles(metadata, torch.arange(padded)[:, None], torch.arange(k // 4)[None, :], padded)
    lo, hi = nibble & 3, nibble >> 2
    kept = nm_keep_mask_ref(x, 2, 4).reshape(rows, k // 4, 4)
    index = torch.arange(4)
    expected_lo = torch.where(kept, index, 4).min(-1).values
    expected_hi = torch.where(kept, index, -1).max(-1).values
    assert torch.equal(lo[:rows], expected_lo) and torch.equal(hi[:rows], expected_hi)
    assert (nibble[rows:] == 0).all()


def test_a_kept_zero_keeps_its_slot():
    groups = torch.tensor([[0.0, 0, 0, 0], [-0.0, 0, 5, 0], [0, 0, 0, 9], [0, -0.0, -0.0, 0], [1, 0, 0, -0.0]])
    pruned, kept = _pruned_and_kept(groups.to(torch.bfloat16).repeat(1, 16))
    values, metadata = compress_24_ref(pruned, kept)
    negative_zero, five, nine, one = -32768, 0x40A0, 0x4110, 0x3F80  # bf16 bits
    slots = bits(values.reshape(5, 16, 2)[:, 0]).tolist()  # each row's first group
    assert slots == [[0, 0], [negative_zero, five], [0, nine], [0, negative_zero], [one, 0]]
    nibble = metadata_nibbles(metadata, torch.arange(5)[:, None], torch.zeros(1, 1, dtype=torch.long), 64)
    assert nibble.flatten().tolist() == [0 | 1 << 2, 0 | 2 << 2, 0 | 3 << 2, 0 | 1 << 2, 0 | 1 << 2]  # lo | hi << 2
    for wrong in (torch.ones_like(kept), kept.int(), kept[:, :32]):
        with pytest.raises(ValueError, match="two members of every group"):
            compress_24_ref(pruned, wrong)


def _pruned_and_kept(x):
    kept = nm_keep_mask_ref(x, 2, 4)
    return torch.where(kept, x, 0), kept


def test_stored_indices_follow_cutlass_rules():
    groups = torch.tensor([[1.0, 2, 0, 0], [0, 0, 3, 4], [0, 5, 0, 6], [7, 0, 0, 0], [0, 0, 8, 0], [0, 0, 0, 9],
                           [0, 0, 0, 0], [-0.0, 0, 0, 0]])  # fmt: skip
    lo, hi = stored_indices_ref(groups != 0)
    assert lo.tolist() == [0, 2, 1, 0, 2, 0, 0, 0]
    assert hi.tolist() == [1, 3, 3, 3, 3, 3, 0, 0]
    values, _ = compress_24_ref(groups.to(torch.bfloat16).repeat(1, 16))  # row i: group i, 16 times (K = 64)
    slots = values.reshape(8, 16, 2)[:, 0]
    assert slots.tolist() == [[1, 2], [3, 4], [5, 6], [7, 0], [8, 0], [0, 9], [0, 0], [0, 0]]
    assert bits(slots[7]).tolist() == [0, 0]  # a free slot holds +0, never the -0.0 that was there


@pytest.mark.parametrize("rows", [1, 64, 65, 130])
def test_metadata_addresses_are_a_permutation(rows):
    k = 192
    padded = -(-rows // 64) * 64
    address = metadata_nibble_address(torch.arange(padded)[:, None], torch.arange(k // 4)[None, :], padded)
    assert sorted(address.flatten().tolist()) == list(range(padded * k // 4))


@pytest.mark.parametrize("single_pass", [None, False])
def test_a_folded_loader_compresses_what_it_loads(single_pass):
    """A loader (here: two pieces read side by side, as the concat fold's) reaches the CUTLASS layout as it reaches
    cuSPARSELt's: the operand equals the same kernel's on the assembled x."""
    head = torch.randn(70, 128, dtype=torch.bfloat16, device=DEVICE)
    tail = torch.randn(70, 192, dtype=torch.bfloat16, device=DEVICE)
    folded = compress_cutlass([head, tail], FoldSpec("concat", ("none", "none")), single_pass=single_pass)
    plain = compress_cutlass([torch.cat([head, tail], dim=1)], IDENTITY, single_pass=single_pass)
    for a, b in zip(folded, plain):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_single_pass_kernel_in_chunks_matches_the_reference(dtype):
    """Rows longer than a program holds are read in chunks, the last one partly past K, their energies added in
    registers: the same operand, the same s. NaN and infinities in a row keep its s at 1 and stay in its values."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 384, generator=g).to(dtype=dtype, device=DEVICE)  # 48 pairs of groups a row: 2 chunks of 32
    x[1, 7], x[2, 100], x[3, :4] = float("nan"), float("inf"), torch.tensor([-0.0, 0.0, 2.0, -0.0])
    values = torch.empty(5, 192, dtype=dtype, device=DEVICE)
    metadata = torch.empty(metadata_bytes(5, 384), dtype=torch.uint8, device=DEVICE)
    scale = one_pass.launch(*loading([x], IDENTITY), values, metadata, blocks=(1, 32, 2))
    ref_values, ref_metadata, ref_scale = prune_compress_24_ref(x)
    assert torch.equal(bits(values), bits(ref_values)) and torch.equal(metadata, ref_metadata)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-6, atol=0)
    assert scale[1] == 1 and scale[2] == 1


# the 16-bit kernel's blocking where it was measured fastest (an H200 at 4608 rows, benchmarks/RESULTS.md, session 31):
# (chunks, pairs a chunk, warps), each the fastest or within 1% of it; at 1152 and 1088 chunks of 16 in one warp took
# 1.6x as long
MEASURED_CHOICES = {1088: (5, 32, 1), 1152: (5, 32, 1), 2304: (9, 32, 1), 3072: (3, 128, 4), 4608: (9, 64, 2),
                    6144: (6, 128, 4)}  # fmt: skip


@pytest.mark.parametrize("k", sorted(MEASURED_CHOICES))
def test_the_single_pass_kernel_takes_the_blocking_measured_fastest(k):
    arguments = one_pass.planned(*loading([torch.empty(2, k, dtype=torch.bfloat16)], IDENTITY)).arguments
    assert tuple(arguments[key] for key in ("CHUNKS", "PAIRS", "num_warps")) == MEASURED_CHOICES[k]


@given(st.integers(1, 256), st.sampled_from(["none", "gelu_tanh"]), st.integers(1, 2))
@example(18, "none", 1).via("DiT-XL's K = 1152")
def test_the_single_pass_blocking_covers_a_row_and_gives_each_lane_its_own_pairs(width, tail, pieces):
    """For any row of whole 64-element blocks (plain, one activation, or two pieces through different ones), the
    blocking `planned` chooses reads the whole row in chunks of at least a warp's 32 pairs, and no program has more
    lanes than pairs (two lanes on one pair compute it twice: 1.6x the time at K = 1152)."""
    k = 64 * width
    split = 64 * max(1, width // 2) if pieces == 2 and width > 1 else k
    widths = [split, k - split] if split < k else [k]
    spec = FoldSpec("concat", ("none", tail)) if len(widths) == 2 else FoldSpec("activation", (tail,))
    operands, loader = loading([torch.empty(2, w, dtype=torch.bfloat16) for w in widths], spec)
    arguments = one_pass.planned(operands, loader).arguments
    rows, pairs, chunks, warps = (arguments[key] for key in ("ROWS", "PAIRS", "CHUNKS", "num_warps"))
    assert chunks * pairs >= k // 8 and (chunks == 1 or rows == 1 and pairs >= 32)
    assert 32 * warps <= rows * pairs


def test_the_single_pass_kernel_in_chunks_of_a_warp_matches_the_reference():
    """DiT-XL's and PixArt's width, 1152 (144 pairs of groups): 5 chunks of 32, the last one partly past K."""
    x = torch.randn(3, 1152, generator=torch.Generator().manual_seed(5)).to(dtype=torch.bfloat16, device=DEVICE)
    values, metadata, scale = compress_cutlass([x], IDENTITY, single_pass=True)
    ref_values, ref_metadata, ref_scale = prune_compress_24_ref(x)
    assert torch.equal(bits(values), bits(ref_values)) and torch.equal(metadata, ref_metadata)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-6, atol=0)


@pytest.mark.parametrize("names", [("gelu_tanh",), ("none", "none"), ("none", "gelu_tanh"), ("gelu", "none")])
def test_the_single_pass_kernel_applies_a_folded_activation_as_the_general_one(names):
    """The pieces' activations (the folds the FP8 one-pass kernel reads too) give the general kernel's operand; the
    compressor takes the kernel only where the pieces share an activation (mixed ones cost it more than they save)."""
    g = torch.Generator().manual_seed(len(names))
    inputs = [torch.randn(70, 128 * (i + 1), generator=g).to(dtype=torch.bfloat16, device=DEVICE)
              for i in range(len(names))]  # fmt: skip
    spec = FoldSpec("activation", names) if len(names) == 1 else FoldSpec("concat", names)
    operands, loader = loading(inputs, spec)
    values = torch.empty(70, loader.width // 2, dtype=torch.bfloat16, device=DEVICE)
    metadata = torch.empty(metadata_bytes(70, loader.width), dtype=torch.uint8, device=DEVICE)
    scale = one_pass.launch(operands, loader, values, metadata)
    general = prune_compress_24_cutlass(operands, loader)
    assert torch.equal(bits(values), bits(general[0])) and torch.equal(metadata, general[1])
    torch.testing.assert_close(scale, general[2], rtol=1e-6, atol=0)
    assert one_pass.applies(operands, loader) == (len(set(names)) == 1)


@settings(max_examples=12)
@given(rows=st.integers(1, 9), head_chunks=st.integers(1, 2), tail_chunks=st.integers(1, 2),
       names=st.sampled_from([("none", "gelu_tanh"), ("gelu", "none"), ("silu", "gelu_tanh")]),
       dtype=st.sampled_from([torch.bfloat16, torch.float16]))  # fmt: skip
def test_pieces_through_different_activations_a_chunk_at_a_time_as_the_general_kernel(rows, head_chunks, tail_chunks,
                                                                                        names, dtype):  # fmt: skip
    """Where the head piece is whole chunks, each chunk goes through its own piece's activation alone (HEAD_CHUNKS):
    the general kernel's operand and s, bit for bit; and the compressor takes the kernel for it at its own blocking
    where the head is whole chunks of it (FLUX's 3072 + 12288)."""
    g = torch.Generator().manual_seed(rows * 10 + head_chunks)
    inputs = [torch.randn(rows, 128 * chunks, generator=g).to(dtype=dtype, device=DEVICE)
              for chunks in (head_chunks, tail_chunks)]  # fmt: skip
    inputs[1][0, :4] = torch.tensor([float("nan"), 1.0, -2.0, 0.0])  # a NaN in the tail keeps the row's s at 1
    operands, loader = loading(inputs, FoldSpec("concat", names))
    values = torch.empty(rows, loader.width // 2, dtype=dtype, device=DEVICE)
    metadata = torch.empty(metadata_bytes(rows, loader.width), dtype=torch.uint8, device=DEVICE)
    blocks = (1, 16, head_chunks + tail_chunks)  # 16 pairs of groups a chunk: the head is `head_chunks` of them
    assert one_pass.planned(operands, loader, blocks=blocks).arguments["HEAD_CHUNKS"] == head_chunks
    scale = one_pass.launch(operands, loader, values, metadata, blocks=blocks)
    general = prune_compress_24_cutlass(operands, loader)
    assert torch.equal(bits(values), bits(general[0])) and torch.equal(metadata, general[1])
    torch.testing.assert_close(scale, general[2], rtol=1e-6, atol=0)
    assert scale[0] == 1
    for head_width, pairs in ((3072, 128), (1536, 64)):  # chunks of 64 pairs where 128 would split the head
        wide = loading([torch.empty(1, head_width, dtype=dtype), torch.empty(1, 12288, dtype=dtype)],
                       FoldSpec("concat", names))  # fmt: skip
        launch = one_pass.planned(*wide)
        assert one_pass.applies(*wide) and (launch.arguments["PAIRS"], launch.arguments["HEAD_CHUNKS"]) == (pairs, 3)


def test_the_single_pass_kernel_says_what_it_cannot_read():
    x = torch.randn(128, 64, dtype=torch.bfloat16, device=DEVICE).t()  # column-major
    with pytest.raises(ValueError, match="single-pass"):
        compress_cutlass([x], IDENTITY, single_pass=True)
    assert torch.equal(bits(compress_cutlass([x], IDENTITY)[0]), bits(prune_compress_24_ref(x)[0]))  # the general one


def test_too_narrow_segments_are_refused():
    narrow = Loader(load_tile, 64, segments=(4, 60))
    with pytest.raises(ValueError, match="too narrow"):
        prune_compress_24_cutlass([torch.randn(8, 64, dtype=torch.bfloat16, device=DEVICE)], narrow)


def test_fp8_encoder_round_trips_e4m3_with_cutlass_rules():
    from lynx_compile.fp8 import quantize_rows

    x = torch.randn(70, 256)
    x[:, :4] = 0
    x[:, 4:8] = torch.tensor([0.0, 0.0, 0.0, 2.0])
    pruned, _ = nm_prune_ref(x)
    quantized, _ = quantize_rows(pruned)
    values, metadata = compress_24_ref(quantized)
    assert values.dtype == torch.float8_e4m3fn and values.shape == (70, 128) and metadata.numel() == 128 * 256 // 8
    bits = quantized.view(torch.uint8)
    expected = torch.where(bits == 0x80, 0, bits)  # -0.0 comes back as +0
    assert torch.equal(decompress_24_ref(values, metadata).view(torch.uint8), expected)
    slots = values.view(torch.uint8).reshape(70, 64, 2)
    assert (slots[:, 0] == 0).all()  # an empty group: (+0, +0)
    assert (slots[:, 1, 0] == 0).all() and torch.equal(slots[:, 1, 1], bits[:, 7])  # one nonzero at 3: (0, x₃)


@pytest.mark.parametrize("rows, k, n", [(1, 128, 16), (70, 256, 48), (33, 384, 8)])
def test_the_fp8_operand_and_its_scales_give_the_documented_fp8_numerics(rows, k, n):
    """prune → e4m3 per pruned row → compress, then the GEMM's reference with the weight's e4m3 rows and scales: the
    FP8 kernel's contract equals `fp8.fp8_linear_ref` (prune, quantize, GEMM, scales, norm, bias)."""
    from lynx_compile.fp8 import fp8_linear_ref, quantize_rows
    from lynx_compile.kernels.prune_quantize_fp8 import prune_quantize_compress_fp8_ref
    from lynx_compile.method import Method

    generator = torch.Generator().manual_seed(rows * k)
    x = torch.randn(rows, k, generator=generator, dtype=torch.float32).to(torch.bfloat16)
    weight = (torch.randn(n, k, generator=generator) / k**0.5).to(torch.bfloat16)
    bias = torch.randn(n, generator=generator).to(torch.bfloat16)
    values, metadata, row_scale = prune_quantize_compress_fp8_ref(x)
    weight_q, weight_scale = quantize_rows(weight)
    out = sparse_mm_ref(values, metadata, weight_q, row_scale, bias, weight_scale.reshape(-1))
    expected = fp8_linear_ref(x, weight, bias, method=Method())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=1e-2, atol=1e-2)  # one bf16 rounding each


def test_reference_gemm_is_the_dense_product_of_the_pruned_operand():
    x = torch.randn(37, 128, dtype=torch.bfloat16)
    weight, bias = torch.randn(24, 128, dtype=torch.bfloat16), torch.randn(24, dtype=torch.bfloat16)
    values, metadata, scale = prune_compress_24_ref(x)
    pruned, _ = nm_prune_ref(x)
    expected = ((pruned.float() @ weight.float().t()) * scale[:, None] + bias.float()).to(torch.bfloat16)
    assert torch.equal(sparse_mm_ref(values, metadata, weight, scale, bias), expected)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda config: config.name)
def test_configuration_names_round_trip(config):
    assert GemmConfig.parse(config.name) == config
    with pytest.raises(ValueError):
        GemmConfig.parse("128x256")


def test_without_a_gpu_the_kernels_say_why():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert cutlass_gemm.unavailable_reason() == "no CUDA GPU"


@pytest.mark.slow
@pytest.mark.skipif(cutlass_gemm.toolchain_error() is not None, reason="needs nvcc and CUTLASS's headers")
@pytest.mark.parametrize("config, dtype", [(CONFIGS[0], torch.bfloat16), (FP8_CONFIGS[0], torch.float8_e4m3fn),
                                           (GemmConfig(128, 128, 128, 1, 1), torch.float8_e4m3fn)],
                         ids=["bf16", "fp8", "fp8-few-tokens"])  # the layout depends on the tile's K only
def test_address_formula_is_the_layout_the_built_kernel_reads(config, dtype):
    """Builds the configuration (a few CPU-minutes the first time; cached) and asks its own layout."""
    lib = cutlass_gemm.library(config, dtype)
    element_bits = 8 * torch.empty(0, dtype=dtype).element_size()
    info = lib.info()
    assert info[1:4] == [config.tile_m, config.tile_n, config.tile_k]
    assert info[7:] == [64, config.tile_k, 8, int(config.stream_k)]
    for rows, k in [(1, 128), (100, 384), (4608, 3072)]:
        padded = -(-rows // 64) * 64
        generator = torch.Generator().manual_seed(rows)
        sample_rows = torch.randint(0, rows, (500,), generator=generator)
        sample_groups = torch.randint(0, k // 4, (500,), generator=generator)
        expected = metadata_nibble_address(sample_rows, sample_groups, padded, element_bits)
        offsets = [lib.metadata_offset(rows, k, int(r), int(4 * g)) for r, g in zip(sample_rows, sample_groups)]
        assert [offset // 4 for offset in offsets] == expected.tolist()  # 8 logical elements per byte: a nibble is 4
