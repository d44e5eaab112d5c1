"""explain on a module compiled in place, on a model whose forward takes an argument called `options`, and on models
Dynamo cannot trace whole: linears in no graph are listed, a block's graph is named in full, fullgraph is passed on."""

import importlib
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lynx_compile
from lynx_compile.eager import sparsified
from lynx_compile.messages import Once
from lynx_compile.method import Method


class Proj(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        return self.proj(x)


class WithOptions(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x, options=None):
        return self.proj(x) * (options or {}).get("scale", 1.0)


def test_a_module_compiled_in_place_is_explained():
    model, x = Proj(), torch.randn(24, 16)
    model.compile()
    report = lynx_compile.explain(model, x)
    assert [(layer.name, layer.decision) for layer in report.layers] == [("proj", "sparse")]


def test_what_torch_compile_returns_for_a_module_is_explained_as_that_module():
    model, x = Proj(), torch.randn(24, 16)
    compiled = torch.compile(model, backend="lynx", options={"exclude": ["proj"]})
    with lynx_compile.collect_reports() as ran:
        compiled(x)
    report = lynx_compile.explain(compiled, x, options={"exclude": ["proj"]})
    rows = [(layer.name, layer.decision) for layer in report.layers]
    assert rows == [(layer.name, layer.decision) for layer in ran.layers] == [("proj", "dense")]
    assert not report.regions()  # nothing here was compiled block by block
    with pytest.raises(TypeError, match="needs the model as an nn.Module.*got function"):
        lynx_compile.explain(torch.compile(model.forward, backend="lynx"), x)


def test_a_model_argument_called_options_reaches_the_model():
    model, x = WithOptions(), torch.randn(24, 16)
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("options")),
                                    with_kwargs=True)  # fmt: skip
    report = lynx_compile.explain(model, x, options={"scale": 2.0}, lynx_options={"exclude": ["proj"]})
    assert seen == [{"scale": 2.0}]
    assert [(layer.name, layer.reason) for layer in report.layers] == [("proj", "excluded by 'proj'")]
    seen.clear()
    report = lynx_compile.explain(model, x, options={"scale": 3.0})  # the model's: its forward names it
    assert seen == [{"scale": 3.0}] and report.layers[0].decision == "sparse"


def test_options_are_lynx_options_when_the_model_takes_none_of_that_name():
    model, x = Proj(), torch.randn(24, 16)
    report = lynx_compile.explain(model, x, options={"exclude": ["proj"]})
    assert report.layers[0].reason == "excluded by 'proj'"
    with pytest.raises(lynx_compile.OptionError, match="unknown option"):
        lynx_compile.explain(model, x, options={"scale": 2.0})


class PerSampleAttention(nn.Module):
    """Mochi's attention processor in small: a per-sample loop Dynamo cannot trace, so it runs the frame eagerly."""

    def __init__(self):
        super().__init__()
        self.q, self.out = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        rows = []
        for sample in x:
            torch._dynamo.graph_break()
            rows.append(self.q(sample))
        return self.out(torch.stack(rows))


class BlockAfterAnother(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.attn, self.proj = nn.Linear(16, 16), PerSampleAttention(), nn.Linear(16, 16)

    def forward(self, x):
        return self.proj(self.attn(self.inp(x)))


class DisabledAttention(PerSampleAttention):
    forward = torch.compiler.disable(PerSampleAttention.forward)


class EndsInDisabled(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.attn = nn.Linear(16, 16), DisabledAttention()

    def forward(self, x):
        return self.attn(self.inp(x))


def test_linears_that_ran_in_no_graph_are_listed():
    report = lynx_compile.explain(EndsInDisabled(), torch.randn(2, 24, 16))
    assert report.modules == ["inp"] and report.outside == ["attn.q", "attn.out"]
    assert ("2 linear module(s) in no graph as a linear (ran eagerly, behind a hook that breaks the graph, inside a "
            "fused op such as nn.MultiheadAttention's, or not called: dense): attn.q, attn.out") in report.summary()


def test_a_linear_compiled_on_its_own_frame_stays_dense_where_the_options_tell_linears_apart():
    """Dynamo runs the loop's frame eagerly and compiles each linear it calls on the linear's own frame: one graph for
    any linear so called, which cannot honour options that treat linears differently."""
    report = lynx_compile.explain(BlockAfterAnother(), torch.randn(2, 24, 16), options={"exclude": ["proj"]})
    own_frame = {layer.name: layer for layer in report.layers if report.graphs[layer.graph].region == "Linear"}
    assert own_frame["proj"].reason == "excluded by 'proj'"
    assert all(layer.decision == "dense" for layer in own_frame.values()) and len(own_frame) == 4
    assert "the graph of nn.Linear's own frame runs for any linear" in own_frame["attn.q"].reason
    assert [layer.decision for layer in report.layers if layer.name == "inp" and layer.graph == 0] == ["sparse"]


def test_fullgraph_is_passed_on_to_torch_compile():
    with pytest.raises(Exception, match="graph_break"):
        lynx_compile.explain(BlockAfterAnother(), torch.randn(2, 24, 16), fullgraph=True)


def test_a_model_argument_called_fullgraph_reaches_the_model():
    class WithFullgraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 16)

        def forward(self, x, fullgraph=False):
            if fullgraph:
                torch._dynamo.graph_break()
            return self.proj(x)

    model, x = WithFullgraph(), torch.randn(24, 16)
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("fullgraph")),
                                    with_kwargs=True)  # fmt: skip
    report = lynx_compile.explain(model, x, fullgraph=False)  # the model's: its forward names it
    assert seen == [False] and [layer.decision for layer in report.layers] == ["sparse"]
    seen.clear()
    report = lynx_compile.explain(model, x, fullgraph=True)  # the model breaks its graph; explain traces on
    assert seen == [True] and [layer.decision for layer in report.layers] == ["sparse"]
    with pytest.raises(Exception, match="graph_break"):  # ... unless told to trace whole
        lynx_compile.explain(model, x, fullgraph=True, lynx_fullgraph=True)


def test_a_block_graph_after_a_break_inside_it_is_named_in_full():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(16, 16)

        def forward(self, x):
            torch._dynamo.graph_break()
            return self.inner(x)

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(2))

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    report = lynx_compile.explain(Stack(), torch.randn(2, 24, 16))
    assert report.modules == ["blocks.0.inner", "blocks.1.inner"] and report.outside == []


class Tied(nn.Module):
    """Two linears sharing one weight: Dynamo reaches it once, through the first, and names both calls after it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + 0.5)


def test_linears_with_a_tied_weight_stay_dense_rather_than_answer_to_the_wrong_name():
    """Under options that pick layers by name; without, the name only labels the rows and both go sparse."""
    model, x = Tied().eval(), torch.randn(2, 24, 16)
    for options in ({"exclude": ["b"]}, {"include": ["b"]}):
        report = lynx_compile.explain(model, x, options=options)
        assert [layer.decision for layer in report.layers] == ["dense", "dense"], options
        if "include" not in options:  # else "not matched by include" says it first
            assert all("tied to another module's" in layer.reason for layer in report.layers)
        with torch.no_grad():
            torch.testing.assert_close(torch.compile(model, backend="lynx", options=options)(x), model(x))
    report = lynx_compile.explain(model, x)
    assert [layer.decision for layer in report.layers] == ["sparse", "sparse"]
    with sparsified({"a": model.a, "b": model.b}, Method()), torch.no_grad():
        expected = model(x)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend="lynx")(x), expected)


class ReusedByItsParent(nn.Module):
    """One module's weight, used by its own forward and again by its parent's matmul: no tie, one name."""

    def __init__(self):
        super().__init__()
        self.fc, self.other = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        return self.other(F.gelu(self.fc(x)) @ self.fc.weight.t())


def test_a_weight_its_parent_reuses_is_not_taken_for_a_tied_one():
    model, x = ReusedByItsParent().eval(), torch.randn(2, 24, 16)
    report = lynx_compile.explain(model, x, options={"exclude": ["other"]})
    rows = [(layer.name, layer.decision, layer.reason) for layer in report.layers]
    assert [(name, decision) for name, decision, _ in rows] == [("fc", "sparse"), ("fc", "sparse"), ("other", "dense")]
    report = lynx_compile.explain(model, x, options={"exclude": ["fc"]})
    assert [layer.reason for layer in report.layers][:2] == ["excluded by 'fc'"] * 2


def test_a_linear_called_twice_is_not_taken_for_a_tied_weight():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 16)

        def forward(self, x):
            return self.proj(torch.relu(self.proj(x)))

    report = lynx_compile.explain(Twice(), torch.randn(2, 24, 16))
    assert [(layer.name, layer.decision) for layer in report.layers] == [("proj", "sparse")] * 2


class MLPBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(MLPBlock() for _ in range(2))

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return x


def test_a_block_whose_forward_is_disabled_is_listed_in_no_graph():
    """`torch.compiler.disable` on one block's forward: it runs eagerly, dense; a graph Dynamo roots at its sibling
    block must not claim it."""
    model = TwoBlocks().eval()
    model.blocks[1].forward = torch.compiler.disable(model.blocks[1].forward)
    report = lynx_compile.explain(model, torch.randn(2, 24, 16))
    assert sorted(layer.name for layer in report.layers) == ["blocks.0.fc1", "blocks.0.fc2"]
    assert report.outside == ["blocks.1.fc1", "blocks.1.fc2"]


def test_a_compiles_report_given_the_model_lists_the_linears_that_ran_eagerly():
    """The same through a real compile: `collect_reports(model)` (the model, or what torch.compile returned for it)
    lists the linears in no graph and says so in its summary; without the model it cannot know them."""
    model = TwoBlocks().eval()
    model.blocks[1].forward = torch.compiler.disable(model.blocks[1].forward)
    compiled, x = torch.compile(model, backend="lynx"), torch.randn(2, 24, 16)
    with torch.no_grad(), lynx_compile.collect_reports(compiled) as report, lynx_compile.collect_reports() as bare:
        compiled(x)
    assert [layer.name for layer in report.layers] == ["blocks.0.fc1", "blocks.0.fc2"] == bare.modules
    assert report.outside == ["blocks.1.fc1", "blocks.1.fc2"] and bare.outside == []
    assert "2 linear module(s) in no graph as a linear" in report.summary() and "in no graph" not in bare.summary()
    other = torch.compile(lambda t: t.relu() * 2, backend="lynx")
    with torch.no_grad(), lynx_compile.collect_reports(compiled) as later:  # compiled already: nothing to say
        compiled(x), other(x)  # another function's graph, none of the model's linears in it
    assert len(later.graphs) == 1 and later.outside == []
    with pytest.raises(TypeError, match="collect_reports takes the model as an nn.Module"):
        with lynx_compile.collect_reports(torch.compile(lambda t: t + 1, backend="lynx")):
            pass


def test_linears_that_ran_eagerly_past_their_own_hooks_break_are_named_where_no_graph_holds_a_linear():
    """Hooks that break the graph at every linear (diffusers' layerwise casting): on torch 2.11 Dynamo runs each
    linear eagerly past the break, and no graph holds one. The report named none and said there was "nothing to
    prune"; it names the hooked linears (an unhooked one's fate is unknown: the block may be around a call that
    compiled other code). Dynamo's skipping is stood in for by `torch.compiler.disable`, so on any torch."""
    model = TwoBlocks().eval()
    for block in model.blocks:
        for linear in (block.fc1, block.fc2):
            linear.register_forward_pre_hook(lambda module, args: torch._dynamo.graph_break())
            linear.forward = torch.compiler.disable(linear.forward)
    model.blocks[1].fc2._forward_pre_hooks.clear()  # unhooked: not named
    compiled = torch.compile(model, backend="lynx")
    with torch.no_grad(), lynx_compile.collect_reports(compiled) as report:
        compiled(torch.randn(2, 24, 16))
    assert report.graphs and not report.layers
    assert report.outside == ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1"]
    assert "3 linear module(s) in no graph as a linear" in report.summary() and "nothing to prune" not in report.summary()


@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16])
def test_linears_quantized_by_torch_ao_are_named_where_they_run_as_they_are(dtype):
    """`torch.ao.quantization.quantize_dynamic` replaces linears by modules of packed weights, which Dynamo leaves to
    run eagerly: no graph holds them, so no row does; the summary names them, and the model computes as quantized."""
    model = TwoBlocks().eval()
    quantized = torch.ao.quantization.quantize_dynamic(model, {"blocks.1.fc1", "blocks.1.fc2"}, dtype=dtype)
    x = torch.randn(2, 24, 16)
    report = lynx_compile.explain(quantized, x)
    assert report.quantized == ["blocks.1.fc1", "blocks.1.fc2"] and "blocks.1.fc1" not in report.modules
    assert "2 linear module(s) quantized by torch.ao ran outside the graphs" in report.summary()
    assert json.loads(report.to_json())["quantized"] == report.quantized
    compiled = torch.compile(quantized, backend="lynx", options={"execution": "dense"})
    with torch.no_grad(), lynx_compile.collect_reports(compiled) as compiled_report:
        torch.testing.assert_close(compiled(x), quantized(x))
    assert compiled_report.quantized == report.quantized
    assert lynx_compile.explain(model, x).quantized == []


class ViewedWeights(nn.Module):
    """Linears over views of a parameter (a fused q/k/v weight chunked, a weight transposed): reported dense."""

    def __init__(self):
        super().__init__()
        self.qkv, self.w = nn.Parameter(torch.randn(48, 16) / 4), nn.Parameter(torch.randn(16, 16) / 4)

    def forward(self, x):
        q, k, v = self.qkv.chunk(3)
        return F.linear(x, q) + F.linear(x, k) * F.linear(F.linear(x, v), self.w.t())


def test_linears_over_a_view_of_a_parameter_are_listed_dense_with_their_reason():
    model, x = ViewedWeights().eval(), torch.randn(2, 24, 16)
    report = lynx_compile.explain(model, x)
    assert [(layer.name, layer.decision) for layer in report.layers] == [("qkv", "dense")] * 3 + [("w", "dense")]
    assert "the parameter put through chunk then getitem" in report.layers[0].reason
    assert "the parameter put through t," in report.layers[3].reason
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend="lynx")(x), model(x))


def test_linears_inside_a_higher_order_ops_subgraph_are_said_to_run_dense(caplog):
    """`torch.cond` (like activation checkpointing and nested compile regions) holds its branches in subgraphs the
    passes do not rewrite: a warning names the linears that run dense there, rather than nothing."""

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda t: self.a(t), lambda t: self.b(t), (x,))

    model, x = Branchy().eval(), torch.randn(2, 24, 16)
    with caplog.at_level("WARNING", logger="lynx_compile"), torch.no_grad():
        out = torch.compile(model, backend="lynx", options={"compiler": "eager"})(x)
    torch.testing.assert_close(out, model(x))
    assert "2 linear call(s) inside higher-order ops' subgraphs" in caplog.text and "run dense" in caplog.text


class RuntimeWeight(nn.Module):
    """A weight made at run time by linears over constants and buffers (as peft's DoRA makes its norm from
    `lora_B(lora_A(eye(K)))`), beside a linear over the model's input."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(32, 16, bias=False), nn.Linear(16, 32, bias=False)
        self.mix = nn.Linear(32, 32, bias=False)
        self.register_buffer("basis", torch.randn(24, 32))
        self.proj = nn.Linear(32, 32)

    def forward(self, x):
        delta = self.b(self.a(torch.eye(32, dtype=x.dtype, device=x.device)))  # 32 rows: a weight, not tokens
        mixed = self.mix(self.basis)  # a buffer's rows
        return self.proj(x) + F.linear(x, delta) + mixed.sum()


def test_a_linear_over_weights_and_constants_alone_stays_dense():
    model, x = RuntimeWeight().eval(), torch.randn(2, 24, 32)
    report = lynx_compile.explain(model, x, options={"min_tokens": 16})
    decisions = {layer.name: (layer.decision, layer.reason) for layer in report.layers}
    assert decisions["proj"] == ("sparse", "2:4 on K + norm, simulated")
    for name in ("a", "b", "mix"):
        assert decisions[name][0] == "dense" and "made of weights and constants alone" in decisions[name][1], name
    with torch.no_grad():  # the weight is computed exactly: the output differs from eager only by proj's pruning
        model.proj.weight.zero_()
        torch.testing.assert_close(torch.compile(model, backend="lynx")(x), model(x))


class AddOne(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)

    def forward(self, x):
        return x + self.fc(x)


class LearnedQueries(nn.Module):
    """A Perceiver's learned query tokens (BriaFibo2's), expanded over the batch, ahead of repeated blocks."""

    _repeated_blocks = ["AddOne"]

    def __init__(self):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(12, 64))
        self.to_q = nn.Linear(64, 64)
        self.blocks = nn.ModuleList([AddOne(), AddOne()])

    def forward(self, x):
        h = torch.cat([self.to_q(self.queries.expand(x.shape[0], -1, -1)), x], dim=1)
        for block in self.blocks:
            h = block(h)
        return h


def test_token_rows_made_of_weights_are_decided_as_tokens_whole_and_block_by_block():
    """Lynx's regional compilation compiles a linear outside the blocks on its own, where its x is a graph input
    whatever made it: a whole-model compile decides a batch of rows made of weights alike (sparse), and keeps only
    2-D ones (a weight's rows: `RuntimeWeight`) dense."""
    model, x = LearnedQueries().eval(), torch.randn(2, 15, 64)
    whole = {layer.name: layer.decision for layer in lynx_compile.explain(model, x).layers}
    torch.compiler.reset()
    lynx_compile.compile_repeated_blocks(model, options={"compiler": "eager"})
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        model(x)
    assert whole["to_q"] == "sparse" and whole == {layer.name: layer.decision for layer in report.layers}


class PeftStyleAdapter(nn.Module):
    """peft's LoRA wrapper, as its modules are named: `base_layer`, `lora_A.<adapter>`, `lora_B.<adapter>`."""

    def __init__(self, rank=16):
        super().__init__()
        self.base_layer = nn.Linear(64, 64)
        self.lora_A = nn.ModuleDict({"default": nn.Linear(64, rank, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(rank, 64, bias=False)})

    def forward(self, x):
        return self.base_layer(x) + self.lora_B["default"](self.lora_A["default"](x))


def test_a_peft_adapters_linears_stay_dense_and_its_base_layer_is_decided():
    report = lynx_compile.explain(PeftStyleAdapter(), torch.randn(2, 24, 64))
    decisions = {layer.name: (layer.decision, layer.reason) for layer in report.layers}
    assert decisions["base_layer"][0] == "sparse"
    for name in ("lora_A.default", "lora_B.default"):
        assert decisions[name][0] == "dense" and "peft LoRA adapter" in decisions[name][1], name


class TwoProjections(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(64, 64)
        self.to_out = nn.Linear(64, 64)

    def forward(self, x):
        return self.to_out(torch.relu(self.to_q(x)))


def wrapped_in_an_adapter(model):
    """`model` as peft leaves it after loading a LoRA on `to_q`: the linear becomes `to_q.base_layer`."""
    adapter = PeftStyleAdapter()
    adapter.base_layer = model.to_q
    model.to_q = adapter
    return model


def test_globs_and_policies_written_for_a_layer_reach_it_once_peft_wraps_it_and_back(caplog):
    x = torch.randn(2, 24, 64)
    by_hand = lynx_compile.Policy({"to_q": lynx_compile.LayerPolicy("dense", "by hand"),
                                   "to_out": lynx_compile.LayerPolicy("sparse", "by hand")})  # fmt: skip
    wrapped = wrapped_in_an_adapter(TwoProjections())
    excluded = lynx_compile.explain(wrapped, x, options={"exclude": ["to_q"]})
    assert {layer.name: layer.reason for layer in excluded.layers}["to_q.base_layer"] == "excluded by 'to_q'"
    with caplog.at_level("WARNING", logger="lynx_compile"):
        report = lynx_compile.explain(wrapped, x, options={"policy": by_hand})
    decisions = {layer.name: (layer.decision, layer.reason) for layer in report.layers}
    assert decisions["to_q.base_layer"] == ("dense", "policy: by hand") and decisions["to_out"][0] == "sparse"
    assert "peft LoRA adapter" in decisions["to_q.lora_A.default"][1]
    assert "the policy" not in caplog.text  # neither unnamed layers nor stale entries
    # A policy calibrated with the adapter loaded, on the model without it (the LoRA unloaded):
    calibrated_wrapped = lynx_compile.Policy({"to_q.base_layer": lynx_compile.LayerPolicy("dense", "by hand"),
                                              "to_out": lynx_compile.LayerPolicy("sparse", "by hand")})  # fmt: skip
    report = lynx_compile.explain(TwoProjections(), x, options={"policy": calibrated_wrapped})
    assert {layer.name: layer.reason for layer in report.layers}["to_q"] == "policy: by hand"


def test_a_frames_graph_serves_the_instances_of_its_parameter_shapes_alone():
    """A graph of `nn.Linear.forward` as a frame of its own (where Dynamo reaches a module from a frame it skips, as
    with peft's DoRA code) is placed class-wide: Dynamo may run it for another instance. Not for one whose
    parameters have other shapes: parameter shapes are static and guarded, so that one gets a graph of its own
    (before, each graph served both, and `explain` named peft's `lora_A` and `lora_B` rows by both, shapes
    crossed)."""
    from lynx_compile.regions import place

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64), nn.Linear(64, 32))
    weight = [(model[0].weight, "weight")]
    assert place(weight, None, first=model).instances == ("0", "2", "3")  # shapes unknown: every instance
    assert place(weight, None, first=model, shapes={"weight": (32, 64)}).instances == ("0", "3")
    assert place([(model[2].weight, "weight")], None, first=model, shapes={"weight": (64, 32)}).instances == ("2",)


class Parametrized(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.w, self.s, self.out = (nn.Linear(32, 32) for _ in range(4))

    def forward(self, x):
        return self.out(self.s(self.w(self.q(x))))


def test_parametrized_weights_are_rows_of_their_modules_dense_with_the_reason():
    from torch.nn.utils import parametrizations

    model = Parametrized()
    parametrizations.orthogonal(model.q)  # its weight is many operations away from its original, with a buffer
    parametrizations.weight_norm(model.w)
    parametrizations.spectral_norm(model.s)
    report = lynx_compile.explain(model, torch.randn(2, 24, 32))
    rows = {layer.name: (layer.decision, layer.reason) for layer in report.layers}
    assert set(rows) == {"q", "w", "s", "out"} and report.outside == []
    for name in ("q", "w", "s"):
        assert rows[name][0] == "dense" and "not as stored" in rows[name][1], rows[name]
    assert "parametrization" in rows["q"][1] and rows["out"][0] == "sparse"


def test_a_report_collects_its_own_threads_compiles_only():
    """Two threads: one collects a report around compiling its model, the other compiles another model in between;
    each report holds its own thread's graph alone (a report was process-wide: explain(a) listed model b's rows)."""
    import threading

    mine, other = Proj().eval(), WithOptions().eval()
    opened, compiled = threading.Event(), threading.Event()
    reports = {}

    def collect():
        with torch.no_grad(), lynx_compile.collect_reports() as report:
            opened.set()
            compiled.wait(timeout=120)
            torch.compile(mine, backend="lynx", options={"compiler": "eager"})(torch.randn(2, 16, 16))
        reports["mine"] = report

    def compile_other():
        opened.wait(timeout=120)
        try:
            with torch.no_grad(), lynx_compile.collect_reports() as report:
                torch.compile(other, backend="lynx", options={"compiler": "eager"})(torch.randn(2, 16, 16))
            reports["other"] = report
        finally:
            compiled.set()

    threads = [threading.Thread(target=collect), threading.Thread(target=compile_other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(reports["mine"].graphs) == len(reports["other"].graphs) == 1
    assert [layer.name for layer in reports["mine"].layers] == [layer.name for layer in reports["other"].layers]
    assert reports["mine"].graphs[0] is not reports["other"].graphs[0]


def test_explain_under_a_stance_that_compiles_nothing_names_the_stance():
    with torch.compiler.set_stance("force_eager"), pytest.raises(RuntimeError, match=r"set_stance\('force_eager'\)"):
        lynx_compile.explain(Proj().eval(), torch.randn(2, 16, 16))


def test_where_no_sparse_path_runs_the_user_hears_it_once_and_auto_on_a_gpu_keeps_layers_dense(caplog, monkeypatch):
    from lynx_compile.paths import execution_warning, resolve_execution

    decide_linears = importlib.import_module("lynx_compile.passes.decide_linears")  # the module, not its pass

    gpu, cpu = torch.device("cuda"), torch.device("cpu")  # this machine runs no sparse path on either
    assert resolve_execution("auto", cpu) == "simulate" and resolve_execution("auto", gpu) == "dense"
    assert execution_warning("auto", cpu) is None and execution_warning("simulate", gpu) is None
    assert "stay dense under execution='auto'" in execution_warning("auto", gpu)
    assert "for float8 weights" in execution_warning("sparse", cpu, float8=True)
    model, x = Proj(), torch.randn(24, 16)
    monkeypatch.setattr(decide_linears, "_execution_warnings", Once())
    with caplog.at_level("WARNING", logger="lynx_compile"), torch.no_grad():
        for _ in range(2):
            torch.compiler.reset()
            torch.compile(model, backend="lynx", options={"execution": "sparse", "compiler": "eager"})(x)
    assert [r.getMessage() for r in caplog.records].count(f"lynx: {execution_warning('sparse', cpu)}") == 1
    # the CPU taken for a GPU no path runs on: "auto" resolves to dense there, each layer with its paths' reasons
    monkeypatch.setattr(decide_linears, "resolve_execution", lambda execution, device, float8=False:
                        resolve_execution(execution, gpu, float8))  # fmt: skip
    report = lynx_compile.explain(model, x)
    assert [layer.decision for layer in report.layers] == ["dense"]
    assert report.layers[0].reason.startswith("execution='auto': ") and "cpu" in report.layers[0].reason


def test_a_graph_without_linears_says_there_was_nothing_to_prune():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    report = lynx_compile.explain(model, torch.randn(1, 3, 16, 16))
    assert not report.layers and "no linear in the graph(s), so nothing to prune" in report.summary()
    assert "nothing to prune" not in lynx_compile.explain(Proj(), torch.randn(24, 16)).summary()
