"""find_linears → decide_linears → rewrite_linears on small FX graphs: every linear form, and what is not a linear."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

import lynx_compile  # noqa: F401
from lynx_compile.config import LynxConfig
from lynx_compile.method import Method, sparse_linear_ref
from lynx_compile.passes import PassContext, run_passes
from lynx_compile.passes.decide_linears import decide_linears
from lynx_compile.passes.find_linears import find_linears

SPARSE_OP = torch.ops.lynx.sparse_linear.default


def simulated(x, layer, bias=True):
    return sparse_linear_ref(x, layer.weight, layer.bias if bias else None, Method())


def folds_by_weight(gm):
    """{weight target: (the op's inputs, its fold as reports name it)} for every sparse op in the graph."""
    from lynx_compile.folds import describe
    from lynx_compile.plan import SparseLinearPlan

    return {node.args[1].target: (node.args[0], describe(SparseLinearPlan.decode(node.args[-1]).fold))
            for node in gm.graph.nodes if node.target == SPARSE_OP}  # fmt: skip


def traced(module, *inputs):
    """An FX graph with fake values on every node, parameters as get_attr (as FX tracing leaves them)."""
    gm = torch.fx.symbolic_trace(module)
    FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*inputs)
    return gm


class OneLinear(nn.Module):
    """proj as a linear spelled `form`, optionally after something that is not a linear."""

    def __init__(self, form, k=16, n=32, bias=True):
        super().__init__()
        self.form = form
        self.proj = nn.Linear(k, n, bias=bias)

    def forward(self, x):
        w, b = self.proj.weight, self.proj.bias
        if self.form == "linear":
            return F.linear(x, w, b)
        if self.form == "matmul_t":
            return x @ w.t()
        if self.form == "matmul_T":
            return torch.matmul(x, w.T)
        if self.form == "matmul_transpose":
            return x.matmul(w.transpose(0, 1))
        if self.form == "matmul_permute":
            return x @ w.permute(1, 0)
        if self.form == "addmm":
            return torch.addmm(b, x.flatten(0, 1), w.t()).view(x.shape[0], x.shape[1], -1)
        raise AssertionError(self.form)


FORMS = ["linear", "matmul_t", "matmul_T", "matmul_transpose", "matmul_permute", "addmm"]


@pytest.mark.parametrize("form", FORMS)
def test_every_form_is_found_rewritten_and_simulated(form):
    module = OneLinear(form)
    x = torch.randn(2, 24, 16)
    gm = traced(module, x)
    ctx = PassContext(LynxConfig())
    gm = run_passes(gm, ctx)
    (site,) = ctx.sites
    assert (site.name, site.tokens, site.in_features, site.out_features) == ("proj", 48, 16, 32)
    assert site.decision == "sparse", site.reason
    targets = [node.target for node in gm.graph.nodes if node.op == "call_function"]
    assert targets.count(SPARSE_OP) == 1
    assert not any(node.op == "call_method" and node.target in ("t", "transpose", "permute") for node in gm.graph.nodes)
    expected = simulated(x, module.proj, bias=form in ("linear", "addmm"))
    torch.testing.assert_close(gm(x), expected, rtol=0, atol=0)


class NotLinears(nn.Module):
    """Attention-style matmuls, an untransposed weight, a scaled addmm, a buffer weight: none is a weight linear."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 16))
        self.register_buffer("frozen", torch.randn(16, 16))

    def forward(self, x, y):
        attention = x @ y.transpose(-1, -2)
        untransposed = x @ self.w
        scaled = torch.addmm(x[0], x[0], self.w.t(), beta=2.0)
        from_buffer = F.linear(x, self.frozen)
        # permutations that leave a 2-D weight as it is: x @ w, not x @ wᵀ
        unpermuted = (x @ self.w.permute(0, 1)) + (x @ self.w.permute(-2, -1)) + (x @ self.w.permute((0, -1)))
        return attention.sum() + untransposed.sum() + scaled.sum() + from_buffer.sum() + unpermuted.sum()


def test_non_linears_are_not_matched():
    x, y = torch.randn(2, 16, 16), torch.randn(2, 16, 16)
    ctx = PassContext(LynxConfig())
    gm = run_passes(traced(NotLinears(), x, y), ctx)
    assert ctx.sites == []
    assert SPARSE_OP not in [node.target for node in gm.graph.nodes]


def _decide(module, x, **options):
    ctx = PassContext(LynxConfig(**options))
    gm = traced(module, x)
    decide_linears(find_linears(gm, ctx), ctx)
    (site,) = ctx.sites
    return site.decision, site.reason


@pytest.mark.parametrize(
    "k, n, tokens, dtype, options, reason",
    [
        (16, 32, 48, torch.float32, {"exclude": ("pro*",)}, "excluded by 'pro*'"),
        (16, 32, 48, torch.float32, {"include": ("blocks.*",)}, "not matched by include"),
        (16, 32, 48, torch.float32, {"execution": "dense"}, "execution='dense'"),
        (18, 32, 48, torch.float32, {}, "K=18 not a multiple of m=4"),
        (16, 32, 48, torch.float32, {"m": 8, "n": 4}, None),
        (12, 32, 48, torch.float32, {}, "features K=12, N=32 < min_features=16"),
        (16, 8, 48, torch.float32, {}, "features K=16, N=8 < min_features=16"),
        (16, 32, 1, torch.float32, {}, "tokens M=1 < min_tokens=16"),
        (16, 32, 1, torch.float32, {"min_tokens": 0}, None),
        (16, 32, 48, torch.float64, {}, "dtype torch.float64 unsupported"),
    ],
)
def test_decision_rules(k, n, tokens, dtype, options, reason):
    module = OneLinear("linear", k, n).to(dtype)
    decision, why = _decide(module, torch.randn(tokens, k, dtype=dtype), **options)
    if reason is None:
        assert decision == "sparse", why
    else:
        assert (decision, why) == ("dense", reason)


def test_mixed_dtypes_stay_dense():
    module = OneLinear("linear").to(torch.bfloat16)

    class Upcast(nn.Module):
        def forward(self, x):
            return F.linear(x, module.proj.weight.float())

    ctx = PassContext(LynxConfig())
    run_passes(traced(Upcast(), torch.randn(48, 16)), ctx)
    assert ctx.sites == []  # a cast weight is an activation, not a parameter: nothing to decide

    decision, why = _decide(module, torch.randn(48, 16))
    assert (decision, why) == ("dense", "input dtype torch.float32 != weight dtype torch.bfloat16")


class BiasPlus(nn.Module):
    """A linear whose bias is its module's plus a run-time term `extra` (a per-sample or per-token bias)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 32)

    def forward(self, x, extra):
        return F.linear(x, self.proj.weight, self.proj.bias + extra)


@pytest.mark.parametrize("x_shape, extra_shape, sparse", [
    ((2, 24, 16), (2, 1, 32), False), ((2, 24, 16), (24, 32), False), ((2, 24, 16), (2, 24, 32), False),
    ((48, 16), (1, 48, 32), False),
    ((2, 24, 16), (1, 32), True), ((2, 24, 16), (32,), True), ((48, 16), (48, 32), True),
])  # fmt: skip
def test_a_bias_that_varies_along_the_tokens_stays_dense(x_shape, extra_shape, sparse):
    """F.linear broadcasts its bias over the output as shaped; the op adds it to the rows flattened to (M, N): a bias
    of one value per output feature (or a 2-D input's own rows) goes sparse, any other stays dense and computes
    F.linear's result (a crash inside the compiled model, before)."""
    module, x, extra = BiasPlus(), torch.randn(x_shape), torch.randn(extra_shape)
    ctx = PassContext(LynxConfig())
    gm = run_passes(traced(module, x, extra), ctx)
    (site,) = ctx.sites
    assert (site.decision == "sparse") == sparse, site.reason
    bias = module.proj.bias + extra
    if not sparse:
        assert site.reason.startswith(f"bias of shape {tuple(bias.shape)}: not one value per output feature")
    if sparse:
        torch.testing.assert_close(gm(x, extra), sparse_linear_ref(x, module.proj.weight, None, Method()) + bias)
        return
    try:
        expected = module(x, extra)
    except RuntimeError:  # eager F.linear refuses some (its addmm cannot expand a 3-D bias to the rows): so does dense
        with pytest.raises(RuntimeError):
            gm(x, extra)
        return
    torch.testing.assert_close(gm(x, extra), expected)


def test_a_bias_of_another_dtype_stays_dense_as_f_linear_would_refuse_it():
    module = OneLinear("linear")
    module.proj.bias.data = module.proj.bias.data.to(torch.bfloat16)
    assert _decide(module, torch.randn(48, 16)) == ("dense", "bias dtype torch.bfloat16 != torch.float32")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ff = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.qkv = nn.Parameter(torch.randn(48, 16) / 4)

    def forward(self, x):
        return self.ff(x) + (x @ self.qkv.t())[..., :16]


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_names_are_recovered_from_dynamo_placeholders():
    captured = []

    def capture(gm, example_inputs):
        ctx = PassContext(LynxConfig())
        captured.append((run_passes(gm, ctx), ctx))
        return gm.forward

    model, x = Tiny(), torch.randn(2, 12, 16)
    with torch.no_grad():
        out = torch.compile(model, backend=capture, fullgraph=True)(x)
    ((gm, ctx),) = captured
    names = [site.name for site in ctx.sites]
    assert names == ["blocks.0.ff.0", "blocks.0.ff.2", "blocks.0.qkv", "blocks.1.ff.0", "blocks.1.ff.2", "blocks.1.qkv"]
    assert [site.form for site in ctx.sites] == ["linear", "linear", "matmul"] * 2
    linear_modules = {name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}
    assert linear_modules <= set(names)
    assert sum(node.target is SPARSE_OP for node in gm.graph.nodes) == len(names)
    assert out.shape == x.shape and torch.isfinite(out).all()


def captured_sites(fn, *args, **options):
    """The sites the lynx passes find in the graph Dynamo captures from `fn(*args)`."""
    found = []

    def capture(gm, example_inputs):
        ctx = PassContext(LynxConfig(**options))
        run_passes(gm, ctx)
        found.extend(ctx.sites)
        return gm.forward

    with torch.no_grad():
        torch.compile(fn, backend=capture, fullgraph=True)(*args)
    return found


class Named(nn.Module):
    """Submodules reached every way a name can go wrong: a forward whose first argument is not `self`, a ModuleDict
    key with a quote, a ModuleList entry, a raw parameter."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.d = nn.ModuleDict({"a'b": nn.Linear(16, 16)})
        self.blocks = nn.ModuleList([nn.Linear(16, 16)])
        self.w = nn.Parameter(torch.randn(16, 16))

    def forward(this, x):  # noqa: N805  (the point of the test)
        return this.blocks[0](this.d["a'b"](this.proj(x))) @ this.w.t()


NAMED = ["proj", "d.a'b", "blocks.0", "w"]
_MODEL = Named()


def _through_global(x):
    return _MODEL.proj(x)


def _through_argument(module, x):
    return module.proj(x)


def test_names_are_qualified_names_however_the_module_is_reached():
    model, x = Named(), torch.randn(24, 16)
    assert [site.name for site in captured_sites(model, x)] == NAMED
    assert set(NAMED) - {"w"} <= {name for name, _ in model.named_modules()}

    def closure(x):
        return model.proj(x)

    assert [site.name for site in captured_sites(closure, x)] == ["proj"]
    assert [site.name for site in captured_sites(_through_global, x)] == ["proj"]
    assert [site.name for site in captured_sites(_through_argument, model, x)] == ["proj"]
    bare = nn.Linear(16, 16)
    assert [site.name for site in captured_sites(bare, x)] == [""] == [n for n, _ in bare.named_modules()]


def test_the_options_and_a_policy_see_those_names():
    model, x = Named(), torch.randn(24, 16)
    report = lynx_compile.explain(model, x, options={"exclude": ["proj"]})
    assert {layer.name: layer.reason for layer in report.layers}["proj"] == "excluded by 'proj'"
    policy = lynx_compile.Policy({name: lynx_compile.LayerPolicy("sparse", "by hand") for name in NAMED})
    report = lynx_compile.explain(model, x, options={"policy": policy})
    assert [(layer.name, layer.decision) for layer in report.layers] == [(name, "sparse") for name in NAMED]


class Aliased(nn.Module):
    """One linear registered as `first` and `second`, reached through the second."""

    def __init__(self):
        super().__init__()
        self.first = self.second = nn.Linear(16, 16)
        self.out = nn.Linear(16, 16)

    def forward(self, x):
        return self.out(self.second(x))


def test_a_module_registered_under_two_names_takes_the_first_as_named_modules_does():
    model, x = Aliased(), torch.randn(24, 16)
    assert [name for name, _ in model.named_modules()] == ["", "first", "out"]
    report = lynx_compile.explain(model, x, options={"exclude": ["first"]})
    rows = {layer.name: (layer.decision, layer.reason) for layer in report.layers}
    assert rows["first"] == ("dense", "excluded by 'first'") and "second" not in rows
    assert rows["out"][0] == "sparse"


def test_a_name_two_modules_share_is_not_recovered_and_stays_dense_where_options_select_by_name():
    """A function calling two models (a transformer and a ControlNet in one compiled step): their layers' names
    collide. Where options pick layers by name they could not say which is meant, so both stay dense; without such
    options a name only labels the report's row, and the layers are decided as any other."""
    first, second, x = Named(), Named(), torch.randn(24, 16)

    def both(x):
        return first.proj(x) + second.proj(x) + first.blocks[0](x)

    sites = captured_sites(both, x, exclude=("nothing",))
    assert [(site.name, site.decision) for site in sites] == [
        ("proj", "dense"), ("proj", "dense"), ("blocks.0", "sparse")]  # fmt: skip
    assert sites[0].reason.startswith("qualified name not recoverable: 'proj' names a linear under each of")
    sites = captured_sites(both, x)
    assert [(site.name, site.decision) for site in sites] == [
        ("proj", "sparse"), ("proj", "sparse"), ("blocks.0", "sparse")]  # fmt: skip


def test_names_from_chains_spelled_with_attributes_and_indices():
    """Other torch versions reach submodules as attributes and list entries (``L['self'].blocks[2].proj``)."""
    from types import SimpleNamespace

    from torch._dynamo.source import AttrSource, DictGetItemSource, GetItemSource, LocalSource, NNModuleSource

    from lynx_compile.passes.names import parameter_name

    def name_of(source):
        graph = torch.fx.Graph()
        node = graph.placeholder("w")
        node.meta["grapharg"] = SimpleNamespace(source=source, example=nn.Parameter(torch.ones(1)))
        graph.output(node)
        found = parameter_name(node, torch.fx.GraphModule(nn.Module(), graph))
        return None if found is None else (found.linear_name, found.problem)

    root = NNModuleSource(LocalSource("fn"))
    blocks = NNModuleSource(GetItemSource(AttrSource(root, "blocks"), 2))
    assert name_of(DictGetItemSource(AttrSource(AttrSource(blocks, "proj"), "_parameters"), "weight")) == (
        "blocks.2.proj", None)  # fmt: skip
    via_dict = DictGetItemSource(DictGetItemSource(AttrSource(root, "__dict__"), "_modules"), "attn")
    assert name_of(DictGetItemSource(AttrSource(NNModuleSource(via_dict), "_parameters"), "w_qkv")) == (
        "attn.w_qkv", None)  # fmt: skip
    last = NNModuleSource(GetItemSource(AttrSource(root, "blocks"), -1))
    name, problem = name_of(DictGetItemSource(AttrSource(last, "_parameters"), "weight"))
    assert "index -1" in problem
    _, problem = name_of(DictGetItemSource(AttrSource(LocalSource("params"), "_parameters"), "weight"))
    assert problem == "the weight is not reached through a module"


def test_a_linear_feeding_a_linear_is_rewritten_in_order():
    class TwoLinears(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

        def forward(self, x):
            return F.linear(F.linear(x, self.up.weight, self.up.bias), self.down.weight, self.down.bias)

    model, x = TwoLinears(), torch.randn(24, 16)
    ctx = PassContext(LynxConfig())
    gm = run_passes(traced(model, x), ctx)
    assert [(site.name, site.decision) for site in ctx.sites] == [("up", "sparse"), ("down", "sparse")]
    expected = simulated(simulated(x, model.up), model.down)
    torch.testing.assert_close(gm(x), expected, rtol=0, atol=0)


class GeluProducers(nn.Module):
    """FLUX's two producers of a linear's input: up → GELU-tanh → down, and out(cat([attn, GELU(mlp)], -1))."""

    def __init__(self, k=64, two_users=False, cat_dim=-1):
        super().__init__()
        self.up, self.down = nn.Linear(k, 4 * k), nn.Linear(4 * k, k)
        self.attn, self.mlp, self.out = nn.Linear(k, k), nn.Linear(k, 2 * k), nn.Linear(3 * k, k)
        self.two_users, self.cat_dim = two_users, cat_dim

    def forward(self, x):
        def linear(layer, x):
            return F.linear(x, layer.weight, layer.bias)

        up = F.dropout(F.gelu(linear(self.up, x), approximate="tanh"), 0.1, False)  # eval: diffusers' FeedForward
        h = linear(self.down, up) + (up[..., :64] if self.two_users else 0)
        mlp = F.gelu(linear(self.mlp, h))
        if self.cat_dim == -1:
            return linear(self.out, torch.cat([linear(self.attn, h), mlp], dim=-1))
        return linear(self.attn, torch.cat([h, F.gelu(h)], dim=self.cat_dim)) + linear(self.mlp, h).sum()


def test_gelu_and_concatenation_are_folded_into_the_sparse_op():
    model, x = GeluProducers(), torch.randn(2, 24, 64)
    ctx = PassContext(LynxConfig())
    gm = run_passes(traced(model, x), ctx)
    ops = {node.args[1].target: node for node in gm.graph.nodes if node.target == SPARSE_OP}
    folds = folds_by_weight(gm)
    assert folds["down.weight"] == ([ops["up.weight"]], "gelu_tanh")
    assert folds["out.weight"] == ([ops["attn.weight"], ops["mlp.weight"]], "cat(none, gelu)")
    remaining = {node.target for node in gm.graph.nodes if node.op == "call_function"}
    assert remaining.isdisjoint({F.gelu, torch.cat, F.dropout}), "absorbed producers are erased"
    reasons = {site.name: site.reason for site in ctx.sites}
    assert "input gelu_tanh folded" in reasons["down"] and "input cat(none, gelu) folded" in reasons["out"]

    def sparse(layer, x):
        return simulated(x, layer)

    h = sparse(model.down, F.gelu(sparse(model.up, x), approximate="tanh"))
    expected = sparse(model.out, torch.cat([sparse(model.attn, h), F.gelu(sparse(model.mlp, h))], dim=-1))
    torch.testing.assert_close(gm(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("variant", [{"two_users": True}, {"cat_dim": 0}])
def test_producers_with_other_users_or_other_shapes_stay(variant):
    model, x = GeluProducers(**variant), torch.randn(2, 24, 64)
    ctx = PassContext(LynxConfig())
    gm = run_passes(traced(model, x), ctx)
    folds = {weight: fold for weight, (_, fold) in folds_by_weight(gm).items()}
    if variant.get("two_users"):  # GELU(up) is also read by the residual: written anyway, so not folded
        assert folds["down.weight"] == "none" and folds["out.weight"] == "cat(none, gelu)"
    else:  # a concatenation along tokens is not one of features: it stays
        assert folds["attn.weight"] == "none" and folds["down.weight"] == "gelu_tanh"
        assert any(node.target is torch.cat for node in gm.graph.nodes)
    torch.testing.assert_close(gm(x), model(x), rtol=0.5, atol=0.5)  # runs; pruned, so only roughly the dense model


class WrittenAfterItsProducer(nn.Module):
    """fc2's input is a fold's product (GELU of fc1's output, or SiLU(a)·b of up's halves); then `write` writes in
    place to what the producer read, or to something else, before fc2 runs."""

    def __init__(self, producer, write):
        super().__init__()
        self.producer, self.write = producer, write
        self.fc1, self.up, self.fc2 = nn.Linear(32, 32), nn.Linear(32, 64), nn.Linear(32, 32)

    def forward(self, x):
        other = x * 2
        if self.producer == "gelu":
            t = self.fc1(x)
            h = F.gelu(t)
        else:
            t, b = self.up(x).chunk(2, dim=-1)
            h = F.silu(t) * b
            t = b  # the write goes to the gate's second half
        target = other if self.write == "unrelated" else t
        if self.write in ("mul_", "unrelated"):
            target.mul_(-3.0)
        elif self.write == "iadd":
            target += 1.0
        elif self.write == "setitem":
            target[:, 0] = 5.0
        elif self.write == "view_fill_":
            target[..., :4].fill_(7.0)
        elif self.write == "relu_":
            torch.relu_(target)
        elif self.write == "out":
            torch.add(target, 1.0, out=target)
        elif self.write == "float_mul_":  # a cast that returns its fp32 input itself
            target.float().mul_(-3.0)
        elif self.write == "to_mul_":
            target.to(torch.float32).mul_(-3.0)
        return self.fc2(h) + t.sum() + other.sum()


@pytest.mark.parametrize("producer", ["gelu", "gated"])
@pytest.mark.parametrize("write", ["mul_", "iadd", "setitem", "view_fill_", "relu_", "out", "float_mul_", "to_mul_",
                                   "unrelated"])
def test_a_producer_whose_input_is_written_in_place_before_the_linear_is_not_folded(producer, write):
    """Folded, the op would read the producer's inputs where the linear runs, after the write (fc2(GELU(-3t))
    instead of fc2(GELU(t))): with a write in between to what the producer read (through a view too), x is written
    out first; a write elsewhere leaves the fold. Either way the method's numerics on the program as written."""
    torch.manual_seed(0)
    model, x = WrittenAfterItsProducer(producer, write).eval(), torch.randn(2, 16, 32)
    torch._dynamo.reset()
    with torch.no_grad(), lynx_compile.collect_reports() as reports:
        out = torch.compile(model, backend="lynx", options={"compiler": "eager", "exclude": ["fc1", "up"]})(x)
        expected = WrittenAfterItsProducer(producer, write).eval()
        expected.load_state_dict(model.state_dict())
        expected.fc2.forward = lambda h: simulated(h, model.fc2)
        expected = expected(x)
    (row,) = [layer for layer in reports.layers if layer.name == "fc2"]
    assert row.decision == "sparse"
    assert ("folded" in row.reason) == (write == "unrelated"), row.reason
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


class WritesThroughAnotherInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 32)

    def forward(self, a, b):
        h = F.gelu(a)
        b.mul_(-3.0)  # b a view of a: the write reaches what the GELU read
        return self.fc(h)


def test_a_write_through_a_graph_input_over_the_producers_storage_keeps_x_written_out():
    """Two graph inputs over one storage look unrelated in the graph; their traced values share it."""
    torch.manual_seed(0)
    model, a = WritesThroughAnotherInput().eval(), torch.randn(2, 16, 32)
    torch._dynamo.reset()
    with torch.no_grad(), lynx_compile.collect_reports() as reports:
        first = a.clone()
        out = torch.compile(model, backend="lynx", options={"compiler": "eager"})(first, first[:, :, :])
        second = a.clone()
        expected = simulated(F.gelu(second), model.fc)
    (row,) = reports.layers
    assert row.decision == "sparse" and "folded" not in row.reason, row.reason
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grad", [False, True])
def test_projections_inside_a_fused_attention_op_are_said_to_run_dense(grad, caplog):
    """nn.MultiheadAttention reaches the graph as one call, and nn.TransformerEncoderLayer in inference as its fast
    path's one op: their projections are no linears to rewrite. Said so; the output is eager's."""
    torch.manual_seed(0)
    layer, x = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True).eval(), torch.randn(2, 16, 32)
    torch._dynamo.reset()
    with torch.set_grad_enabled(grad), caplog.at_level("WARNING", logger="lynx_compile"):
        out = torch.compile(layer, backend="lynx", options={"compiler": "eager", "exclude": ["linear*"]})(x)
        expected = layer(x)
    assert any("fused attention op(s)" in record.getMessage() for record in caplog.records)
    torch.testing.assert_close(out, expected)
