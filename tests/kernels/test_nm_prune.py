"""The N:M prune kernel against its reference, and both against the properties the method needs."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lynx_compile.kernels.nm_prune import (
    NORM_EPS,
    nm_keep_mask_ref,
    nm_prune,
    nm_prune_ref,
    nm_prune_triton,
)

# The real kernel where there is a GPU, the interpreter (on CPU tensors) where there is not: see conftest.py.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PATTERNS = [(2, 4), (1, 4), (3, 4), (4, 8), (1, 2), (8, 16)]


@st.composite
def activations(draw, max_rows=40, max_groups=48):
    """A random (M, K) activation: gaussian, or small integers (many exact ties), in any float dtype."""
    n, m = draw(st.sampled_from(PATTERNS))
    rows = draw(st.integers(1, max_rows))
    groups = draw(st.integers(1, max_groups))
    dtype = draw(st.sampled_from(DTYPES))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if draw(st.booleans()):
        x = torch.randn(rows, groups * m, generator=generator) * draw(st.sampled_from([1e-3, 1.0, 50.0]))
    else:
        x = torch.randint(-2, 3, (rows, groups * m), generator=generator).float()
    x = x.to(dtype=dtype, device=DEVICE)
    if draw(st.booleans()):  # a transposed view: the kernel must honour strides, not assume contiguity
        x = x.t().contiguous().t()
    return x, n, m


def groups_of(t, m):
    return t.reshape(t.shape[0], -1, m)


@given(activations())
def test_kernel_matches_reference_bit_for_bit(case):
    x, n, m = case
    pruned, scale = nm_prune_triton(x, n, m)
    pruned_ref, scale_ref = nm_prune_ref(x, n, m)
    assert pruned.dtype == x.dtype and pruned.is_contiguous()
    assert torch.equal(pruned, pruned_ref)
    torch.testing.assert_close(scale, scale_ref, rtol=1e-5, atol=0)


def rank_rule_mask(x, n, m):
    """The rank rule as the module docstring states it, over all (j, i) pairs at once: slow, and obviously right."""
    mag = groups_of(x.float().abs(), m).nan_to_num(nan=float("inf"), posinf=float("inf"))
    other, this = mag.unsqueeze(-2), mag.unsqueeze(-1)  # [..., j, i]
    index = torch.arange(m, device=x.device)
    lower_index = index.view(1, m) < index.view(m, 1)  # [j, i]: i < j
    rank = ((other > this) | ((other == this) & lower_index)).sum(-1)
    return (rank < n).reshape(x.shape)


@given(activations(), st.sampled_from([None, float("nan"), float("inf"), float("-inf")]), st.data())
def test_reference_mask_is_the_rank_rule(case, special, data):
    x, n, m = case
    if special is not None:  # non-finite values, some of them tied with each other
        x = x.clone()
        flat = x.view(-1) if x.is_contiguous() else x.t().view(-1)
        for index in data.draw(st.lists(st.integers(0, x.numel() - 1), max_size=6)):
            flat[index] = special
    assert torch.equal(nm_keep_mask_ref(x, n, m), rank_rule_mask(x, n, m))


@given(activations())
def test_keeps_n_largest_per_group(case):
    x, n, m = case
    keep = groups_of(nm_keep_mask_ref(x, n, m), m)
    mag = groups_of(x.float().abs(), m)
    assert (keep.sum(-1) == n).all()
    smallest_kept = torch.where(keep, mag, float("inf")).amin(-1)
    largest_dropped = torch.where(keep, -1.0, mag).amax(-1)
    assert (smallest_kept >= largest_dropped).all()
    pruned, _ = nm_prune_ref(x, n, m)
    nonzeros = groups_of(x != 0, m).sum(-1)
    assert torch.equal(groups_of(pruned != 0, m).sum(-1), nonzeros.clamp(max=n))


@given(activations())
def test_ties_go_to_the_lower_index(case):
    x, n, m = case
    keep = groups_of(nm_keep_mask_ref(x, n, m), m)
    mag = groups_of(x.float().abs(), m)
    for i in range(m):
        for j in range(i + 1, m):
            # j kept over an equal i would break the rule
            assert not (keep[..., j] & ~keep[..., i] & (mag[..., i] == mag[..., j])).any()


@given(activations())
def test_scale_restores_the_row_norm(case):
    x, n, m = case
    pruned, scale = nm_prune_triton(x, n, m)
    x64, pruned64 = x.double(), pruned.double()
    expected = torch.sqrt(x64.square().sum(1) / (pruned64.square().sum(1) + NORM_EPS))
    torch.testing.assert_close(scale.double(), expected, rtol=1e-5, atol=0)
    has_energy = pruned64.square().sum(1) > 1e-2  # where eps = 1e-8 is negligible
    rescaled = (scale.double()[:, None] * pruned64).norm(dim=1)
    torch.testing.assert_close(rescaled[has_energy], x64.norm(dim=1)[has_energy], rtol=1e-4, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_equal_group_keeps_the_first_n(dtype):
    x = torch.tensor([[-1.0, 1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=dtype, device=DEVICE)
    for kernel in (nm_prune_ref, nm_prune_triton):
        pruned, _ = kernel(x, 2, 4)
        assert pruned.tolist() == [[-1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [nm_prune_ref, nm_prune_triton])
def test_non_finite_values(dtype, kernel):
    """NaN ranks as +inf (kept, so it reaches the GEMM as in a dense layer); non-finite rows get scale 1."""
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1)).to(dtype=dtype, device=DEVICE)
    x[1, 5] = float("nan")
    x[2, 8] = float("inf")
    x[3, 0] = float("-inf")
    pruned, scale = kernel(x, 2, 4)
    assert pruned[1, 5].isnan() and pruned[2, 8] == float("inf") and pruned[3, 0] == float("-inf")
    assert scale[1:].tolist() == [1.0, 1.0, 1.0]
    assert torch.isfinite(scale[0]) and scale[0] > 1
    clean, _ = nm_prune_ref(x[:1], 2, 4)
    assert torch.equal(pruned[:1], clean)


def test_fp32_overflowing_norm_gets_scale_one():
    x = torch.full((1, 8), 1e30, device=DEVICE)
    for kernel in (nm_prune_ref, nm_prune_triton):
        pruned, scale = kernel(x, 2, 4)
        first_two_of_each_group = torch.tensor([[1.0, 1.0, 0.0, 0.0] * 2], device=DEVICE)
        assert scale.item() == 1.0 and torch.equal(pruned, x * first_two_of_each_group)


def test_zero_row_and_empty_input():
    pruned, scale = nm_prune_triton(torch.zeros(2, 8, device=DEVICE), 2, 4)
    assert not pruned.any() and scale.tolist() == [0.0, 0.0]
    pruned, scale = nm_prune_triton(torch.zeros(0, 8, device=DEVICE), 2, 4)
    assert pruned.shape == (0, 8) and scale.shape == (0,)


@pytest.mark.parametrize(
    "shape, n, m, dtype, message",
    [
        ((4, 10), 2, 4, torch.float32, "not a multiple"),
        ((4, 8), 2, 3, torch.float32, "power of two"),
        ((4, 8), 4, 4, torch.float32, "1 <= n < m"),
        ((2, 4, 8), 2, 4, torch.float32, "2-D"),
        ((4, 8), 2, 4, torch.int32, "supports"),
    ],
)
def test_bad_input_is_a_clear_error(shape, n, m, dtype, message):
    x = torch.ones(shape, dtype=dtype, device=DEVICE)
    for kernel in (nm_prune_ref, nm_prune_triton, nm_prune):
        with pytest.raises(ValueError, match=message):
            kernel(x, n, m)
