"""The fused 2:4 prune + compress kernel, its reference encoder, and the sm_90 layout they share."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lynx_compile.folds import FoldSpec, compress
from lynx_compile.kernels.activations import ACTIVATIONS, activate, activation_ref
from lynx_compile.kernels.nm_prune import nm_prune_ref
from lynx_compile.kernels.cusparselt_layout import (
    compress_24_ref,
    decompress_24_ref,
    metadata_nibble_address,
    prune_compress_24_ref,
    stored_indices_ref,
)
from lynx_compile.kernels.prune_compress_24 import as_flat, compressed_numel, compressed_shape, padded_rows, prune_compress_24

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@st.composite
def activations(draw, max_rows=150, max_k_tiles=5):
    rows = draw(st.integers(1, max_rows))
    k = 64 * draw(st.integers(1, max_k_tiles))
    dtype = draw(st.sampled_from([torch.bfloat16, torch.float16]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(rows, k, generator=generator)
    if draw(st.booleans()):  # exact ties and exact zeros (including -0.0): the cases an encoder gets wrong
        x = torch.randint(-2, 3, (rows, k), generator=generator).float() * draw(st.sampled_from([1.0, -0.0]))
    x = x.to(dtype=dtype, device=DEVICE)
    if draw(st.booleans()):
        x = x.t().contiguous().t()
    return x


def bits(t):
    return t.view(torch.int16)


@given(activations())
def test_kernel_matches_reference_bit_for_bit(x):
    operand, scale = prune_compress_24(x)
    ref_buffer, ref_scale = prune_compress_24_ref(x)
    assert operand.shape == compressed_shape(*x.shape) and ref_buffer.shape == (compressed_numel(*x.shape),)
    assert torch.equal(bits(as_flat(operand, *x.shape)), bits(ref_buffer))
    # s is a sum over K, taken in another order than torch's: equal to the last fp32 bits
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)


@settings(max_examples=25)
@given(activations(max_rows=80), st.sampled_from([16, 64]))
def test_rows_padded_to_a_multiple_are_the_zero_padded_matrix_compressed(x, multiple):
    """The operand of M rows padded to `multiple` is the encoding of x̃ with zero rows appended; s covers M rows."""
    rows, k = x.shape
    stored = padded_rows(rows, multiple)
    operand, scale = prune_compress_24(x, pad_rows_to=multiple)
    pruned, ref_scale = nm_prune_ref(x, 2, 4)
    expected = compress_24_ref(torch.cat([pruned, pruned.new_zeros(stored - rows, k)]))
    assert stored % multiple == 0 and operand.shape == compressed_shape(stored, k) and scale.shape == (rows,)
    assert torch.equal(bits(as_flat(operand, stored, k)), bits(expected))
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)


def test_scale_of_a_non_finite_row_is_one():
    x = torch.randn(16, 64, dtype=torch.float16, device=DEVICE)
    x[3, 5], x[7, 0] = float("inf"), float("nan")
    _, scale = prune_compress_24(x)
    assert scale[3] == 1 and scale[7] == 1 and torch.isfinite(scale).all()
    torch.testing.assert_close(scale, prune_compress_24_ref(x)[1], rtol=1e-5, atol=0)


@settings(max_examples=25)  # pieces narrow the kernel's chunks: more programs, slower under the interpreter
@given(activations(max_rows=64), st.integers(1, 63), st.lists(st.sampled_from(sorted(ACTIVATIONS)), min_size=2,
                                                                max_size=2))
@example(torch.randn(8, 64, dtype=torch.float16, device=DEVICE), 0, ["gelu_tanh", "gelu"]).via("a split at 4")
def test_pieces_with_activations_equal_the_materialised_input(x, split_choice, names):
    """Pruning [act₀(x₀) | act₁(x₁)] on load (the concat fold's loader; the activation fold's for one piece) equals
    pruning that matrix written out (by the same activation code)."""
    rows, k = x.shape
    # layers split where their producers do, at multiples of 64 in practice; the example takes the narrowest split,
    # one group of 4, which makes every chunk one group (slow under the interpreter: once is enough)
    splits = list(range(64, k, 64)) + [k]  # k: one piece
    split = 4 if split_choice == 0 else splits[split_choice % len(splits)]
    pieces = [x[:, :split], x[:, split:]] if split < k else [x]
    names = names[: len(pieces)]
    materialised = torch.cat([activate(piece, name) for piece, name in zip(pieces, names)], dim=1)
    one_activation = FoldSpec("activation", (names[0],)) if names[0] != "none" else FoldSpec()
    operand, scale = compress(pieces, FoldSpec("concat", tuple(names)) if len(pieces) > 1 else one_activation)
    ref_buffer, ref_scale = prune_compress_24_ref(materialised)
    assert torch.equal(bits(as_flat(operand, rows, k)), bits(ref_buffer))
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)


@given(activations(max_rows=40), st.sampled_from(["gelu", "gelu_tanh"]))
def test_activation_on_load_is_torchs_to_one_rounding(x, name):
    # exp/erf of the GPU, the interpreter and torch may differ in the last fp32 bit: one rounding step of the dtype
    ulp = 2**-7 if x.dtype == torch.bfloat16 else 2**-10
    torch.testing.assert_close(activate(x, name).float(), activation_ref(x, name).float(), rtol=ulp, atol=1e-6)


@given(activations())
def test_decompress_recovers_the_pruned_matrix(x):
    pruned, _ = nm_prune_ref(x, 2, 4)
    assert torch.equal(decompress_24_ref(compress_24_ref(pruned), *x.shape), pruned)


@pytest.mark.parametrize("rows, k", [(64, 64), (64, 256), (192, 192), (16, 64)])
def test_metadata_addresses_tile_the_buffer_exactly_once(rows, k):
    padded_rows = -(-rows // 64) * 64
    address = metadata_nibble_address(torch.arange(padded_rows)[:, None], torch.arange(k // 4)[None, :], k)
    assert torch.equal(address.flatten().sort().values, torch.arange(padded_rows * k // 4))


# Metadata nibbles torch._cslt_compress wrote on an H100 (2026-11-24, benchmarks/probe_cslt_layout.py) for each
# possible content of one group: the nonzero positions of the pruned group -> (stored lo, stored hi).
H100_STORED_INDICES = {
    (0, 1): (0, 1), (0, 2): (0, 2), (0, 3): (0, 3), (1, 2): (1, 2), (1, 3): (1, 3), (2, 3): (2, 3),
    (0,): (0, 3), (1,): (1, 3), (2,): (2, 3), (3,): (2, 3), (): (2, 3),
}  # fmt: skip


@pytest.mark.parametrize("nonzeros, expected", H100_STORED_INDICES.items())
def test_stored_indices_follow_the_measured_rule(nonzeros, expected):
    group = torch.zeros(1, 1, 4)
    group[0, 0, list(nonzeros)] = torch.arange(1.0, len(nonzeros) + 1)
    lo, hi = stored_indices_ref(group)
    assert (lo.item(), hi.item()) == expected


def test_padding_rows_are_empty_groups():
    buffer = compress_24_ref(torch.zeros(16, 64, dtype=torch.bfloat16))
    metadata = buffer.view(torch.uint8)[16 * 64 :]
    assert metadata.numel() == 64 * 64 // 8 and (metadata == 0xEE).all()


@pytest.mark.parametrize("shape, dtype, message", [((8, 96), torch.bfloat16, "multiple of 64"),
                                                   ((8, 64), torch.float32, "implemented for"),
                                                   ((2, 8, 64), torch.float16, "2-D")])  # fmt: skip
def test_bad_input_is_a_clear_error(shape, dtype, message):
    x = torch.ones(shape, dtype=dtype, device=DEVICE)
    for encode in (prune_compress_24, prune_compress_24_ref):
        with pytest.raises(ValueError, match=message):
            encode(x)


@pytest.mark.parametrize("pieces, names, message", [
    ([(8, 64)] * 3, ["none"] * 3, "1 to 2 pieces"),
    ([(8, 64)], ["relu"], "unknown activation"),
    ([(8, 32), (4, 32)], ["none", "none"], "share token count"),
    ([(8, 30), (8, 34)], ["none", "none"], "K % 4"),
    ([(8, 32), (8, 64)], ["none", "gelu"], "multiple of 64"),
])  # fmt: skip
def test_bad_pieces_are_a_clear_error(pieces, names, message):
    with pytest.raises(ValueError, match=message):
        compress([torch.ones(shape, dtype=torch.bfloat16, device=DEVICE) for shape in pieces],
                 FoldSpec("concat", tuple(names)))  # fmt: skip


def test_several_operands_need_a_loader():
    x = torch.ones(8, 64, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ValueError, match="need a loader"):
        prune_compress_24([x, x])


def test_empty_input_matches_the_fake_shape():
    x = torch.zeros(0, 64, dtype=torch.bfloat16, device=DEVICE)
    operand, scale = prune_compress_24(x)
    assert operand.shape == compressed_shape(0, 64) and scale.shape == (0,)
