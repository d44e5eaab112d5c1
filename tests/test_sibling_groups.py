"""Sibling linears that read one x run as a group: one prune for all their GEMMs, decided as a unit, outputs, names,
reasons and gradients exactly those of the members run alone."""

import pytest
import torch
import torch.nn as nn
from sparse_op import plan, sparse_linear
from test_registries import ToyPath, toy_path  # noqa: F401  (the fixture registers the toy path)

import lynx_compile
from lynx_compile.method import Method, sparse_linear_ref
from lynx_compile.ops import sparse_linear_group_args

SPARSE = {"execution": "sparse"}


class Attention(nn.Module):
    """q, k and v of one normalised input, as diffusers spells them, then an output projection."""

    def __init__(self, dim=32):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False), nn.Linear(dim, 64)
        self.to_out = nn.Linear(64, dim)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        return self.to_out(v * (q * k).sum(-1, keepdim=True).sigmoid())


def members_alone(module, x):
    """The block with every linear sparsified on its own (the method's reference)."""
    h = module.norm(x)
    q, k, v = (sparse_linear_ref(h, layer.weight, layer.bias, Method()) for layer in (module.to_q, module.to_k,
                                                                                      module.to_v))  # fmt: skip
    y = v * (q * k).sum(-1, keepdim=True).sigmoid()
    return sparse_linear_ref(y, module.to_out.weight, module.to_out.bias, Method())


def test_siblings_are_decided_and_run_as_one_group(toy_path):
    module, x = Attention().eval(), torch.randn(2, 12, 32)
    report = lynx_compile.explain(module, x, options=SPARSE)
    layers = {layer.name: layer for layer in report.layers}
    for name in ("to_q", "to_k", "to_v"):
        assert layers[name].decision == "sparse" and layers[name].siblings == ("to_q", "to_k", "to_v")
        assert "sibling group of 3 (to_q, to_k, to_v): x pruned once for 3 GEMMs" in layers[name].reason
    assert layers["to_out"].siblings == () and layers["to_out"].decision == "sparse"
    after = report.graphs[0].after
    assert after.count("lynx.sparse_linear_group.default") == 1 and after.count("lynx.sparse_linear.default") == 1
    assert "input layer_norm(affine) pruned on load" in layers["to_q"].reason  # the norm folded into the group's op
    assert ToyPath.calls["groups"] == 2  # measured as one unit (its norm on load, and written out first)
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):
        compiled = torch.compile(module, backend="lynx", options=SPARSE)(x)
    torch.testing.assert_close(compiled, members_alone(module, x), rtol=1e-5, atol=1e-5)
    assert (ToyPath.calls["lower_group"], ToyPath.calls["lower"]) == (1, 1)  # the group, and to_out, lowered


def test_a_group_that_does_not_pay_leaves_its_members_to_their_own_decisions(toy_path):
    ToyPath.speed["group"] = 1e-6  # the group measures far slower than dense; alone each member still wins
    module, x = Attention().eval(), torch.randn(2, 12, 32)
    report = lynx_compile.explain(module, x, options=SPARSE)
    assert all(layer.decision == "sparse" and layer.siblings == () for layer in report.layers)
    assert "sparse_linear_group" not in report.graphs[0].after


def test_groups_gradients_are_the_members_straight_through_gradients(toy_path):
    module, x = Attention(), torch.randn(2, 12, 32, requires_grad=True)
    compiled = torch.compile(module, backend="lynx", options={**SPARSE, "compiler": "eager"})
    out = compiled(x)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, module.to_q.weight, module.to_k.weight, module.to_v.bias), grad_out)

    x2 = x.detach().clone().requires_grad_()
    h = module.norm(x2)
    q, k, v = (sparse_linear(h, layer.weight, layer.bias, min_tokens=16) for layer in (module.to_q, module.to_k,
                                                                                       module.to_v))  # fmt: skip
    y = v * (q * k).sum(-1, keepdim=True).sigmoid()
    expected = sparse_linear(y, module.to_out.weight, module.to_out.bias, min_tokens=16)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    wanted = torch.autograd.grad(expected, (x2, module.to_q.weight, module.to_k.weight, module.to_v.bias), grad_out)
    for actual, want in zip(grads, wanted):
        torch.testing.assert_close(actual, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("min_tokens", [0, 1000])
def test_opcheck_sparse_linear_group(bias, min_tokens):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 12, 32, generator=g, requires_grad=True)
    weights = [torch.randn(n, 32, generator=g, requires_grad=True) for n in (16, 48)]
    biases = [torch.randn(16, generator=g, requires_grad=True) if bias else None, None]
    args = sparse_linear_group_args([x], weights, biases, plan(min_tokens=min_tokens))
    assert args[3] == ([0] if bias else [])
    torch.library.opcheck(torch.ops.lynx.sparse_linear_group.default, args)
    outs = torch.ops.lynx.sparse_linear_group(*args)
    for out, weight, b in zip(outs, weights, biases):
        torch.testing.assert_close(out, sparse_linear(x, weight, b, min_tokens=min_tokens), rtol=0, atol=0)


def test_a_weight_changed_after_compiling_is_the_one_that_runs(toy_path):
    """The group reads the members' own parameters: an in-place update or a new parameter is what runs next."""
    module, x = Attention().eval(), torch.randn(2, 12, 32)
    compiled = torch.compile(module, backend="lynx", options=SPARSE)
    with torch.no_grad():
        compiled(x)
        module.to_q.weight.mul_(2.0)  # in place (e.g. a LoRA fused into the weights)
        torch.testing.assert_close(compiled(x), members_alone(module, x), rtol=1e-5, atol=1e-5)
        module.to_k.weight = nn.Parameter(torch.randn_like(module.to_k.weight))  # replaced
        torch.testing.assert_close(compiled(x), members_alone(module, x), rtol=1e-5, atol=1e-5)
