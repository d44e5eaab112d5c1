"""The lynx custom ops: schema/fake/autograd registration (opcheck) and the math they stand for."""

import pytest
import torch
import torch.nn.functional as F
from sparse_op import plan, sparse_linear, sparse_linear_call

import lynx_compile  # noqa: F401
from lynx_compile.kernels.nm_prune import nm_keep_mask_ref, nm_prune_ref
from lynx_compile.plan import SparseLinearPlan


def sample_args(tokens=24, k=32, n=16, bias=True, dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(tokens * 1000 + k)
    x = torch.randn(2, tokens // 2, k, generator=g, dtype=dtype)
    weight = torch.randn(n, k, generator=g, dtype=dtype) / k**0.5
    b = torch.randn(n, generator=g, dtype=dtype) if bias else None
    for t in (x, weight, b):
        if t is not None:
            t.requires_grad_(requires_grad)
    return x, weight, b


def sample_adapter(k=32, n=16, rank=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(rank)
    return torch.randn(n, rank, generator=g, dtype=dtype), torch.randn(rank, k, generator=g, dtype=dtype) / k**0.5


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("min_tokens", [0, 1000])
@pytest.mark.parametrize("lora", [False, True])
def test_opcheck_sparse_linear(bias, norm, min_tokens, lora):
    x, weight, b = sample_args(bias=bias, requires_grad=True)
    args = sparse_linear_call(x, weight, b, sample_adapter() if lora else None, norm=norm, min_tokens=min_tokens)
    torch.library.opcheck(torch.ops.lynx.sparse_linear.default, args)


def test_opcheck_nm_prune():
    torch.library.opcheck(torch.ops.lynx.nm_prune.default, (torch.randn(8, 16), 2, 4))


@pytest.mark.parametrize("norm", [True, False])
def test_sparse_linear_is_the_method(norm):
    """y = s·(x̃·Wᵀ) + b, computed here the paper's way round: scale the pruned input, then a plain linear."""
    x, weight, b = sample_args()
    rows = x.reshape(-1, x.shape[-1])
    pruned, scale = nm_prune_ref(rows, 2, 4)
    compensated = pruned * scale[:, None] if norm else pruned
    expected = F.linear(compensated, weight, b).reshape(*x.shape[:-1], -1)
    torch.testing.assert_close(sparse_linear(x, weight, b, norm=norm), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_the_layer_rounds_its_epilogue_as_the_eager_op_does(dtype):
    """s·out + b is rounded once, in the eager op as in the graph Inductor fuses: what `calibrate` and the quality
    tools measure eagerly is what the compiled model runs, bit for bit (rounded after each step, 28% of these
    outputs differed by a rounding where bias and output cancel)."""
    x, weight, b = sample_args(tokens=64, k=64, n=128, dtype=dtype)
    layer = torch.nn.Linear(64, 128, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(b)
        compiled = torch.compile(layer, backend="lynx", options={"execution": "simulate"})(x)
    assert compiled.dtype == dtype and torch.equal(compiled, sparse_linear(x, weight, b))


def test_a_correction_adds_its_low_rank_map_of_the_dense_input():
    x, weight, b = sample_args()
    lora_a, lora_b = sample_adapter()
    plain = sparse_linear(x, weight, b)
    corrected = sparse_linear(x, weight, b, (lora_a, lora_b))
    torch.testing.assert_close(corrected - plain, x @ lora_b.t() @ lora_a.t(), rtol=1e-4, atol=1e-4)
    args = list(sparse_linear_call(x, weight, b, (lora_a, lora_b)))
    args[4] = None  # lora_b
    with pytest.raises(ValueError, match="together"):
        torch.ops.lynx.sparse_linear(*args)


@pytest.mark.parametrize("lora", [False, True])
def test_below_min_tokens_the_op_is_dense_and_uncorrected(lora):
    x, weight, b = sample_args()
    out = sparse_linear(x, weight, b, sample_adapter() if lora else None, min_tokens=1000)
    torch.testing.assert_close(out, F.linear(x, weight, b))


def test_off_the_paths_row_multiple_the_op_is_dense():
    """24 rows, a path that runs multiples of 16 only (cuSPARSELt's rule): dense, whatever the path."""
    x, weight, b = sample_args()
    torch.testing.assert_close(sparse_linear(x, weight, b, rows=16), F.linear(x, weight, b))
    assert not torch.allclose(sparse_linear(x, weight, b, rows=8), F.linear(x, weight, b))


def test_gradient_is_straight_through():
    """With the mask (and scale) held constant the layer is linear; its gradients are those of that linear map."""
    x, weight, b = sample_args(requires_grad=True)
    out = sparse_linear(x, weight, b)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, weight, b), grad_out)

    rows = x.detach().reshape(-1, x.shape[-1])
    keep = nm_keep_mask_ref(rows, 2, 4)
    _, scale = nm_prune_ref(rows, 2, 4)
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, weight, b))
    frozen = torch.where(keep, x2.reshape(-1, x.shape[-1]), 0) * scale[:, None]
    expected = torch.autograd.grad(F.linear(frozen, w2, b2).reshape(out.shape), (x2, w2, b2), grad_out)
    for actual, want in zip(grads, expected):
        torch.testing.assert_close(actual, want, rtol=1e-5, atol=1e-5)


def folded_args(requires_grad=False):
    """x = cat([attention, GELU(up)], -1) as the op takes it folded: pieces, plus weight and bias."""
    g = torch.Generator().manual_seed(7)
    head, tail = torch.randn(2, 12, 16, generator=g), torch.randn(2, 12, 48, generator=g)
    weight, b = torch.randn(16, 64, generator=g) / 8, torch.randn(16, generator=g)
    for t in (head, tail, weight, b):
        t.requires_grad_(requires_grad)
    return [head, tail], weight, b


@pytest.mark.parametrize("fold", ["concat(none,gelu_tanh)", "concat(gelu,none)"])
def test_opcheck_sparse_linear_with_a_folded_input(fold):
    pieces, weight, b = folded_args(requires_grad=True)
    torch.library.opcheck(torch.ops.lynx.sparse_linear.default, sparse_linear_call(pieces, weight, b, fold=fold))


def test_opcheck_sparse_linear_with_an_activation_folded():
    x, weight, b = sample_args(requires_grad=True)
    args = sparse_linear_call(x, weight, b, fold="activation(gelu)")
    torch.library.opcheck(torch.ops.lynx.sparse_linear.default, args)


@pytest.mark.parametrize("min_tokens", [0, 1000])
def test_a_folded_input_is_the_layer_of_its_concatenation(min_tokens):
    """Forward and gradients of the op on folded pieces equal those of the op on x = cat(act(pieces))."""
    pieces, weight, b = folded_args(requires_grad=True)
    folded = sparse_linear(pieces, weight, b, fold="concat(none,gelu_tanh)", min_tokens=min_tokens)
    x = torch.cat([pieces[0], F.gelu(pieces[1], approximate="tanh")], dim=-1)
    plain = sparse_linear(x, weight, b, min_tokens=min_tokens)
    torch.testing.assert_close(folded, plain, rtol=0, atol=0)
    grad_out = torch.randn_like(plain)
    expected = torch.autograd.grad(plain, (*pieces, weight, b), grad_out)  # through F.gelu's own autograd
    for actual, want in zip(torch.autograd.grad(folded, (*pieces, weight, b), grad_out), expected):
        torch.testing.assert_close(actual, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fold, message", [("activation(gelu)", "one input"), ("concat(gelu)", "activation each"),
                                           ("concat(none,relu)", "unknown activation"),
                                           ("squeeze(none)", "unknown producer fold")])  # fmt: skip
def test_a_fold_that_does_not_fit_its_inputs_is_a_clear_error(fold, message):
    pieces, weight, b = folded_args()
    with pytest.raises(ValueError, match=message):
        sparse_linear(pieces, weight, b, fold=fold)


def test_the_plan_round_trips_through_its_encoding():
    original = plan("cusparselt", fold="concat(none,gelu_tanh)", n=2, m=4, norm=False, min_tokens=7, rows=16,
                    algorithm=3)  # fmt: skip
    decoded = SparseLinearPlan.decode(original.encode())
    assert decoded == original and decoded.param("algorithm") == 3 and decoded.fold.params == ("none", "gelu_tanh")
