"""Regional compilation (one graph per block class, or per decision pattern) decides and runs every instance as
whole-model compilation does, by full name; where it cannot, it says so. A toy model with repeated blocks (fast to
trace), compiled with ``compiler="eager"``: the lynx passes are the same as with Inductor, and without Inductor's
code generation the outputs of the two compilations must be equal bit for bit (tests/test_regional_flux.py does the
same on a diffusers FLUX)."""

import functools
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lynx_compile
from lynx_compile import LayerPolicy, Policy, RegionError, regions
from lynx_compile.eager import sparsified
from lynx_compile.method import Method, sparse_linear_ref
from lynx_compile.regional import OUTSIDE, compiled_regionally
from lynx_compile.regions import inside

EAGER = {"execution": "simulate", "compiler": "eager"}


class RepeatedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(32, 64)
        self.out = nn.Linear(64, 32)

    def forward(self, x):
        return x + self.out(F.gelu(self.inner(x)))


class Stack(nn.Module):
    """`out` is also the name of a linear in every block: a short name that must never match the other one."""

    _repeated_blocks = ["RepeatedBlock"]

    def __init__(self, count=4, width=16):
        super().__init__()
        self.inp = nn.Linear(width, 32)
        self.blocks = nn.ModuleList(RepeatedBlock() for _ in range(count))
        self.out = nn.Linear(32, 16)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def stack(count=4, width=16):
    torch.manual_seed(0)
    return Stack(count, width).eval()


def batch(seed=0, tokens=24, width=16):
    return torch.randn(2, tokens, width, generator=torch.Generator().manual_seed(seed))


def linear_names(model):
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def mixed_policy(model):
    """Every linear sparse, except block 1's `out` and the model's own `out`: blocks 0, 2, 3 share a pattern."""
    dense = {"blocks.1.out", "out"}
    return Policy({name: LayerPolicy("dense" if name in dense else "sparse", f"by hand: {name}")
                   for name in linear_names(model)}, type(model).__name__)  # fmt: skip


def run(model, *inputs):
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        outs = [model(x) for x in inputs]
    return outs, report


def whole(model, options, *inputs):
    torch.compiler.reset()
    compiled = torch.compile(model, backend="lynx", options=options)
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        outs = [compiled(x) for x in inputs]
    return outs, report


def raises_region_error(match):
    """Dynamo hands a backend's error on as BackendCompilerFailed, the lynx error inside."""
    return pytest.raises(Exception, match=match, check=lambda error: isinstance(
        getattr(error, "inner_exception", error), RegionError))  # fmt: skip


def rows(report):
    return {layer.name: (layer.decision, layer.reason) for layer in report.layers}


def compiled_rows(whole_report, kept_eager):
    """The whole-model rows regional compilation shows: all but the linears outside the blocks that the options keep
    dense by name, which it leaves eager (dense)."""
    assert all(rows(whole_report)[name][0] == "dense" for name in kept_eager)
    return {name: row for name, row in rows(whole_report).items() if name not in kept_eager}


def test_each_instance_runs_as_decided_exactly_as_whole_model_compilation_without_recompiling():
    model = stack()
    options = {**EAGER, "policy": mixed_policy(model)}
    expected, whole_report = whole(model, options, batch(0), batch(1))
    torch.compiler.reset()
    regional = lynx_compile.compile_repeated_blocks(stack(), options=options)
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        outs, report = run(regional, batch(0), batch(1))  # two steps: the second compiles nothing
    assert all(torch.equal(out, ref) for out, ref in zip(outs, expected))
    assert rows(report) == compiled_rows(whole_report, ["out"])
    assert rows(report)["blocks.1.out"] == ("dense", "policy: by hand: blocks.1.out")
    assert rows(report)["blocks.2.out"][0] == "sparse" and rows(whole_report)["out"][0] == "dense"
    # blocks 0, 2, 3 share one graph, block 1 has its own; `inp` (sparse) is compiled on its own, `out` stays eager
    assert report.regions() == {"RepeatedBlock": {"instances": 4, "patterns": 2, "graphs": 2},
                                OUTSIDE: {"instances": 1, "patterns": 1, "graphs": 1}}  # fmt: skip
    assert [graph.instances for graph in report.graphs if graph.region == "RepeatedBlock"] == [
        ("blocks.0", "blocks.2", "blocks.3"), ("blocks.1",)]  # fmt: skip


def test_globs_with_full_names_select_alike_in_both_modes_and_explain_shows_every_instance():
    options = {**EAGER, "exclude": ["blocks.2.*", "out"], "include": ["blocks.*", "out", "inp"]}
    expected, whole_report = whole(stack(), options, batch())
    torch.compiler.reset()
    regional = lynx_compile.compile_repeated_blocks(stack(), options=options)
    outs, report = run(regional, batch())
    assert torch.equal(outs[0], expected[0]) and rows(report) == compiled_rows(whole_report, ["out"])
    assert rows(report)["blocks.2.out"] == ("dense", "excluded by 'blocks.2.*'")
    assert rows(report)["blocks.3.out"][0] == "sparse"
    explained = lynx_compile.explain(regional, batch(), options={**options, "exclude": ["blocks.0.inner"]})
    assert [layer.name for layer in explained.layers] == linear_names(regional)  # explain's options: `out` included
    assert rows(explained)["blocks.0.inner"] == ("dense", "excluded by 'blocks.0.inner'")
    assert "RepeatedBlock ×4 in 2 decision pattern(s), 2 graph(s)" in explained.summary()
    assert compiled_regionally(regional) is not None  # and explain gave the model its own compilation back
    assert torch.equal(run(regional, batch())[0][0], expected[0])


def test_under_inductors_freezing_the_parameters_dynamo_installs_on_the_graph_keep_their_full_names():
    # With freezing on, under no_grad Dynamo installs parameters as attributes of the graph (`L__self___blocks_0_out_
    # weight`) instead of inputs: names read from those attributes matched no glob and no policy, and a block's graph
    # could not be placed (a RegionError from lynx's compile_repeated_blocks).
    options = {**EAGER, "exclude": ["blocks.2.*", "out"]}
    expected, whole_report = whole(stack(), options, batch())
    with torch._inductor.config.patch(freezing=True):
        frozen, frozen_report = whole(stack(), options, batch())
        torch.compiler.reset()
        regional, regional_report = run(lynx_compile.compile_repeated_blocks(stack(), options=options), batch())
    assert torch.equal(frozen[0], expected[0]) and torch.equal(regional[0], expected[0])
    assert rows(frozen_report) == rows(whole_report)
    assert rows(regional_report) == compiled_rows(whole_report, ["out"])
    assert rows(frozen_report)["blocks.2.out"] == ("dense", "excluded by 'blocks.2.*'")


class Adapted(nn.Module):
    """A linear as peft leaves it after loading a LoRA into it: `base_layer` beside the adapter's own linears."""

    def __init__(self, base):
        super().__init__()
        self.base_layer = base
        self.lora_A, self.lora_B = nn.Linear(base.in_features, 4, bias=False), nn.Linear(4, base.out_features)

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(x))


def test_an_adapter_loaded_into_one_block_after_compiling_names_that_block_alone():
    model = lynx_compile.compile_repeated_blocks(stack(), options=EAGER)
    run(model, batch())
    model.blocks[1].out = Adapted(model.blocks[1].out)
    _, report = run(model, batch())
    modules = {name for name, _ in model.named_modules()}
    assert {layer.name for layer in report.layers} <= modules
    assert rows(report)["blocks.1.out.base_layer"][0] == "sparse"
    assert [graph.instances for graph in report.graphs] == [("blocks.1",)]  # the others still run their graph


def break_the_graph_at_every_linear(model):
    """A hook on each linear that Dynamo cannot trace, as diffusers' layerwise casting and leaf-level offloading put."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_pre_hook(lambda module, args: torch._dynamo.graph_break())


@functools.cache
def dynamo_compiles_a_linear_past_its_hooks_graph_break():
    """Whether this torch's Dynamo compiles an nn.Linear's forward after its pre-hook broke the graph (2.13 does;
    2.11 runs the rest of `Module._call_impl` eagerly, a frame of torch's own it skips): a probe, not a version."""
    linear = nn.Linear(8, 8)
    break_the_graph_at_every_linear(linear)
    captured = []

    def backend(gm, example_inputs):
        captured.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch.compile(linear, backend=backend)(torch.randn(2, 8))
    torch.compiler.reset()
    return F.linear in captured or torch._C._nn.linear in captured


needs_linears_compiled_past_hooks = pytest.mark.skipif(
    "not dynamo_compiles_a_linear_past_its_hooks_graph_break()",
    reason="this torch's Dynamo runs a linear eagerly after its pre-hook breaks the graph: no graph holds it")


class ManyOutside(nn.Module):
    """Ten linears outside two blocks, all of one shape."""

    _repeated_blocks = ["RepeatedBlock"]

    def __init__(self):
        super().__init__()
        self.inputs = nn.ModuleList(nn.Linear(32, 32) for _ in range(10))
        self.blocks = nn.ModuleList(RepeatedBlock() for _ in range(2))

    def forward(self, x):
        for linear in self.inputs:
            x = linear(x)
        for block in self.blocks:
            x = block(x)
        return x


@needs_linears_compiled_past_hooks
def test_a_graph_break_at_every_linear_keeps_the_blocks_sparse_under_regional_compilation():
    # A hook breaking the graph at each linear (diffusers' layerwise casting, leaf-level offloading) has Dynamo
    # compile nn.Linear.forward on its own: code every region shares, one cache entry per distinct set of options.
    # One set per linear outside the blocks ran it past Dynamo's recompile limit, and the blocks' linears dense.
    torch.manual_seed(0)
    model = ManyOutside().eval()
    break_the_graph_at_every_linear(model)
    x = torch.randn(2, 24, 32)
    expected, _ = whole(model, EAGER, x)
    torch.compiler.reset()
    outs, report = run(lynx_compile.compile_repeated_blocks(model, options=EAGER), x)
    assert torch.equal(outs[0], expected[0])
    assert {"blocks.0.out", "blocks.1.inner"} <= {layer.name for layer in report.sparse_layers}


class HeadLikeInner(nn.Module):
    """Blocks, then a head of the shape of the blocks' `inner`."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(RepeatedBlock() for _ in range(2))
        self.head = nn.Linear(32, 64)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@needs_linears_compiled_past_hooks
def test_under_diffusers_regional_compilation_linears_outside_the_blocks_are_no_instances_of_a_block_linears_graph():
    # A graph break at each linear has Dynamo compile nn.Linear.forward on its own, placed over every linear of its
    # shapes; the head, outside the blocks, runs eagerly and was reported sparse.
    torch.manual_seed(0)
    model = HeadLikeInner().eval()
    break_the_graph_at_every_linear(model)
    for block in model.blocks:  # what diffusers' compile_repeated_blocks does
        block.compile(backend="lynx", options=EAGER)
    regions.register_model(model)  # as lynx finds a diffusers model on the stack
    torch.compiler.reset()
    _, report = run(model, torch.randn(2, 24, 32))
    assert "head" not in {layer.name for layer in report.sparse_layers}
    assert {"blocks.0.inner", "blocks.1.out"} <= {layer.name for layer in report.sparse_layers}


class EagerHook:
    """A diffusers hook whose forward Dynamo never traces (the SEA cache's on a model's first block)."""

    @torch.compiler.disable
    def new_forward(self, module, *args):
        return type(module).forward(module, *args)


def test_a_block_whose_hook_runs_it_eagerly_is_not_reported_among_the_instances_a_graph_serves():
    model = stack()
    hook = EagerHook()
    model.blocks[0].forward = functools.partial(hook.new_forward, model.blocks[0])  # diffusers' form: a partial
    for compile_model in (lambda: torch.compile(model, backend="lynx", options=EAGER),
                          lambda: lynx_compile.compile_repeated_blocks(model, options=EAGER)):  # fmt: skip
        torch.compiler.reset()
        _, report = run(compile_model(), batch())
        sparse = {layer.name for layer in report.sparse_layers}
        assert "blocks.1.out" in sparse and not any(name.startswith("blocks.0.") for name in sparse), sparse


def test_runs_eagerly_sees_through_diffusers_wrappers():
    hook, plain = EagerHook(), RepeatedBlock()
    assert not regions.runs_eagerly(plain)
    wrapped = RepeatedBlock()
    wrapped.forward = functools.update_wrapper(functools.partial(lambda module, x: x, wrapped), plain.forward)
    assert not regions.runs_eagerly(wrapped)
    wrapped._diffusers_hook = types.SimpleNamespace(hooks={"sea": hook})  # a registered hook's own forward
    assert regions.runs_eagerly(wrapped)


def test_compiling_again_with_other_options_keeps_nothing_of_the_first_compilation():
    model = lynx_compile.compile_repeated_blocks(stack(), options=EAGER)
    assert set(rows(run(model, batch())[1])) == set(linear_names(model))  # `inp` and `out` compiled on their own
    torch.compiler.reset()
    lynx_compile.compile_repeated_blocks(model, options={**EAGER, "exclude": ["inp"]})
    outs, report = run(model, batch())
    assert "inp" not in rows(report) and rows(report)["out"][0] == "sparse"  # `inp` runs eagerly again, dense
    expected, _ = whole(stack(), {**EAGER, "exclude": ["inp"]}, batch())
    assert torch.equal(outs[0], expected[0])


def test_a_region_learns_no_dynamic_shapes_from_another_models_region():
    """Dynamo keeps what it learnt about dynamic shapes by function name: the `inp` of a model of other shapes, run
    on other token counts, must not make this one's token count symbolic (blocks of equal shapes share what Dynamo
    learnt, as one block class's forward does under diffusers' regional compilation)."""
    run(lynx_compile.compile_repeated_blocks(stack(), options=EAGER), batch())
    _, report = run(lynx_compile.compile_repeated_blocks(stack(width=24), options=EAGER), batch(tokens=40, width=24))
    (inp,) = [layer for layer in report.layers if layer.name == "inp"]
    assert inp.tokens == 80 and not inp.opaque


def test_lora_corrections_are_per_instance_and_many_patterns_need_no_recompile():
    """A correction is the layer's own: each corrected instance gets a graph of its own (ten here, more than
    Dynamo's default recompile limit of 8 — distinct code per pattern, so no limit applies)."""
    model, samples = stack(10), [batch(seed) for seed in range(2)]
    policy = lynx_compile.calibrate(model, samples, target=10.0, lora_rank=4, ridge=1e-3)
    assert sum(layer.lora_rank > 0 for layer in policy.layers.values()) >= 10
    options = {**EAGER, "policy": policy}
    expected, whole_report = whole(model, options, batch(5))
    torch.compiler.reset()
    regional = lynx_compile.compile_repeated_blocks(stack(10), options=options)
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        outs, report = run(regional, batch(5))
    assert torch.equal(outs[0], expected[0]) and rows(report) == rows(whole_report)
    assert report.regions()["RepeatedBlock"] == {"instances": 10, "patterns": 10, "graphs": 10}


def test_a_graph_of_a_block_is_named_in_full_wherever_lynx_knows_the_model():
    model = stack()
    regions.register_model(model)
    options = {**EAGER, "exclude": ["blocks.1.inner", "out"]}  # `out`: the model's own, not the blocks'
    for block in model.blocks:
        block.compile(backend="lynx", options=options)  # as diffusers' compile_repeated_blocks does
    with raises_region_error(r"one graph serves 4 instances of RepeatedBlock.*'inner'.*"
                                          r"excluded by 'blocks.1.inner'.*lynx_compile.compile_repeated_blocks"):
        run(model, batch())
    torch.compiler.reset()
    for block in model.blocks:
        block.compile(backend="lynx", options={**options, "exclude": ["out"]})
    _, report = run(model, batch())
    assert sorted(rows(report)) == sorted(linear_names(model)[1:-1])  # every block instance, by its full name
    assert {decision for decision, _ in rows(report).values()} == {"sparse"}  # `out` matched none of theirs


def test_a_graph_of_a_block_lynx_cannot_place_never_matches_names_of_the_model():
    policy = mixed_policy(stack())
    for options, message in (({"policy": policy}, "rooted at a RepeatedBlock, the policy was calibrated on a Stack"),
                             ({"exclude": ["out"]}, "RepeatedBlock compiled on its own")):  # fmt: skip
        torch.compiler.reset()
        model = stack()  # never given to lynx: nothing says where its blocks are
        for block in model.blocks:
            block.compile(backend="lynx", options={**EAGER, **options})
        with raises_region_error(message):
            run(model, batch())
    torch.compiler.reset()
    model = stack()
    for block in model.blocks:
        block.compile(backend="lynx", options=EAGER)  # nothing matched by name: relative names only label rows
    _, report = run(model, batch())
    assert sorted(rows(report)) == ["inner", "out"]


class PlainBlock(RepeatedBlock):
    pass


class PlainStack(Stack):
    """A model of no diffusers class: nothing marks its blocks as repeated."""

    _repeated_blocks = []

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(PlainBlock() for _ in self.blocks)


def test_a_glob_that_names_nothing_of_the_module_compiled_is_said_so_not_ignored(caplog):
    """Blocks compiled in place (`block.compile`) of a model lynx does not know name their layers relative to the
    block; a full name in the options then matches nothing: lynx says so, once, instead of running it sparse
    silently. The same glob over the whole model compiled matches, and nothing is said."""
    torch.manual_seed(0)
    model = PlainStack().eval()
    options = {**EAGER, "exclude": ["blocks.1.inner"]}
    for block in model.blocks:
        block.compile(backend="lynx", options=options)
    with caplog.at_level("WARNING", logger="lynx_compile"):
        run(model, batch(), batch(1))
    warned = [record.getMessage() for record in caplog.records if "matches no layer" in record.getMessage()]
    assert len(warned) == 1 and "exclude pattern 'blocks.1.inner'" in warned[0] and "PlainBlock" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="lynx_compile"):
        _, report = whole(PlainStack().eval(), options, batch())
    assert rows(report)["blocks.1.inner"][0] == "dense"
    assert not [record for record in caplog.records if "matches no layer" in record.getMessage()]


@pytest.mark.parametrize("disabled", ["blocks.0", "blocks.0.out"])
def test_a_module_wrapped_by_torch_compiler_disable_is_reported_as_it_runs(disabled):
    """`torch.compiler.disable(module)` wraps it in a module whose forward runs eagerly: a disabled block is no
    instance of the blocks' graph (it was listed sparse, and ran dense), and a block with a disabled linear still is
    one where the graph serves it (its other linear ran sparse, and was listed in no graph). What the report lists
    sparse is what ran sparse."""
    torch.manual_seed(0)
    model = PlainStack().eval()
    parent, _, child = disabled.rpartition(".")
    model.get_submodule(parent).register_module(child, torch.compiler.disable(model.get_submodule(disabled)))
    (out,), report = whole(model, EAGER, batch())
    sparse = [layer.name for layer in report.layers if layer.decision == "sparse"]
    assert not [name for name in sparse if inside(name, disabled)]
    assert "blocks.1.inner" in sparse and ("blocks.0.inner" in sparse) == (disabled == "blocks.0.out")
    with torch.no_grad(), sparsified({name: model.get_submodule(name) for name in sparse}, Method()):
        expected = model(batch())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


class Guided(nn.Module):
    """A user's classifier-free guidance wrapper around a model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        uncond, cond = self.model(torch.cat([x, x])).chunk(2)
        return uncond + 2.0 * (cond - uncond)


def test_an_enclosing_compile_that_inlines_the_blocks_compiled_regionally_is_said_to(caplog):
    """torch.compile of a wrapper traces through the blocks compile_repeated_blocks compiled (Dynamo inlines them):
    the enclosing compile's options apply, not the regional ones. Said so, once; the regional compile alone and
    explain of it say nothing."""
    model = stack()
    lynx_compile.compile_repeated_blocks(model, options={**EAGER, "exclude": ["blocks.0.inner"]})
    with caplog.at_level("WARNING", logger="lynx_compile"):
        _, report = run(model, batch())
        lynx_compile.explain(model, batch())
    assert rows(report)["blocks.0.inner"][0] == "dense"
    assert not [record for record in caplog.records if "inlines its blocks" in record.getMessage()]
    with caplog.at_level("WARNING", logger="lynx_compile"):
        (out,), report = whole(Guided(model), EAGER, batch())
    assert rows(report)["model.blocks.0.inner"][0] == "sparse"  # the enclosing compile's options: no exclude
    warned = [record.getMessage() for record in caplog.records if "inlines its blocks" in record.getMessage()]
    assert len(warned) == 1 and "Stack (model)" in warned[0]


class BreakingBlock(RepeatedBlock):
    """A block Dynamo cannot trace whole (HiDream's mixture of experts, a `.item()`): its frame is compiled alone."""

    def forward(self, x):
        h = F.gelu(self.inner(x))
        torch._dynamo.graph_break()
        return x + self.out(h)


class BreakingStack(Stack):
    _repeated_blocks = []  # compiled whole, as a user who never heard of regional compilation does

    def __init__(self, count=3):
        super().__init__(count)
        self.blocks = nn.ModuleList(BreakingBlock() for _ in range(count))


def test_a_graph_break_inside_a_block_names_its_layers_in_full_under_a_plain_compile():
    """Dynamo compiles a block whose forward breaks on its own (the model's frame, a loop over the blocks, runs
    eagerly): the model given to torch.compile is found on the stack, so the block's layers are named in full and
    the block's `out` never answers to the model's."""
    torch.manual_seed(0)
    model, x = BreakingStack().eval(), batch()
    with torch.no_grad():
        eager = model(x)
    (out,), report = whole(model, {**EAGER, "exclude": ["blocks.*"]}, x)
    assert sorted(rows(report)) == sorted(linear_names(model)[1:-1]), rows(report)
    assert {decision for decision, _ in rows(report).values()} == {"dense"}
    torch.testing.assert_close(out, eager, rtol=0, atol=0)  # every layer that ran compiled was excluded
    (out,), report = whole(model, {**EAGER, "exclude": ["out"]}, x)  # the model's own `out`: runs eagerly, dense
    assert {decision for decision, _ in rows(report).values()} == {"sparse"} and len(rows(report)) == 6
    assert (out - eager).norm() / eager.norm() > 1e-3  # the blocks' layers did run sparse
    with raises_region_error(r"one graph serves 3 instances of BreakingBlock"):
        whole(model, {**EAGER, "exclude": ["blocks.1.inner"]}, x)


class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_the_model_found_on_the_stack_is_the_innermost_one_the_user_compiled():
    """A model compiled alone is named from itself, whatever wraps it in the process: a wrapper compiled before it
    (and still alive), or a diffusers model calling it uncompiled."""
    from diffusers import ModelMixin

    class DiffusersOuter(ModelMixin):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    torch.manual_seed(0)
    model, x = BreakingStack().eval(), batch()
    _, alone = whole(model, {**EAGER, "exclude": ["blocks.*"]}, x)
    wrapper = Wrapper(model).eval()
    _, wrapped = whole(wrapper, {**EAGER, "exclude": ["blocks.*"]}, x)  # the wrapper's names: none of them match
    assert sorted(rows(wrapped)) == [f"inner.blocks.{i}.{layer}" for i in range(3) for layer in ("inner", "out")]
    assert {decision for decision, _ in rows(wrapped).values()} == {"sparse"}
    _, again = whole(model, {**EAGER, "exclude": ["blocks.*"]}, x)
    assert rows(again) == rows(alone) and {decision for decision, _ in rows(alone).values()} == {"dense"}
    torch.compiler.reset()
    model = stack(3)
    model.compile(backend="lynx", options={**EAGER, "exclude": ["blocks.1.*"]})
    _, report = run(DiffusersOuter(model).eval(), x)
    assert rows(report)["blocks.1.inner"][0] == "dense" and rows(report)["blocks.0.inner"][0] == "sparse"


class OptionalBlock(RepeatedBlock):
    """WanVACE's VACE blocks in small: one class, and only the first instance has an input projection."""

    def __init__(self, first):
        super().__init__()
        self.proj_in = nn.Linear(32, 32) if first else None

    def forward(self, x):
        return super().forward(x if self.proj_in is None else self.proj_in(x))


def test_a_block_graph_serves_only_the_instances_built_as_the_one_traced():
    model = stack(3)
    model.blocks = nn.ModuleList(OptionalBlock(first=index == 0) for index in range(3))
    model.eval()
    regions.register_model(model)
    for block in model.blocks:
        block.compile(backend="lynx", options={**EAGER, "exclude": ["blocks.0.proj_in"]})
    _, report = run(model, batch())
    assert sorted(rows(report)) == sorted(linear_names(model)[1:-1])  # no `blocks.1.proj_in`: there is none
    assert rows(report)["blocks.0.proj_in"][0] == "dense"
    assert {rows(report)[name][0] for name in rows(report) if name != "blocks.0.proj_in"} == {"sparse"}
    first = regions.place([(model.blocks[0].inner.weight, "inner.weight")], None)
    later = regions.place([(model.blocks[2].inner.weight, "inner.weight")], None)
    assert first.instances == ("blocks.0",) and later.instances == ("blocks.1", "blocks.2")


def test_placement_reads_the_path_from_parameter_identity():
    model = stack(3)
    regions.register_model(model)
    block = model.blocks[2]
    placed = regions.place([(block.out.weight, "out.weight"), (block.inner.bias, "inner.bias")], None)
    assert placed.path == "blocks.2" and placed.names("out") == ("blocks.0.out", "blocks.1.out", "blocks.2.out")
    region = regions.RegionSpec("RepeatedBlock", ("blocks.0", "blocks.2"))
    placed = regions.place([(block.inner.weight, "weight")], region)  # a graph of `inner`'s own frame
    assert placed.path == "blocks.2.inner" and placed.instances == ("blocks.0.inner", "blocks.2.inner")
    # The model's own `out`, reached through a global (guarded as that object), and as a frame's own module (which
    # Dynamo may run for any Linear).
    assert regions.place([(model.out.weight, "weight")], None, class_wide=False).instances == ("out",)
    assert regions.place([(model.out.weight, "weight")], None).instances == tuple(linear_names(model))
    assert regions.place([(nn.Linear(2, 2).weight, "weight")], None) is None


def test_with_inductor_the_regional_model_matches_the_whole_one_to_rounding():
    """Inductor fuses a block graph and a whole-model graph differently: equal up to float rounding."""
    model = stack(3)
    options = {"execution": "simulate", "policy": mixed_policy(model)}
    expected, _ = whole(model, options, batch())
    torch.compiler.reset()
    outs, report = run(lynx_compile.compile_repeated_blocks(stack(3), options=options), batch())
    torch.testing.assert_close(outs[0], expected[0], rtol=1e-5, atol=1e-5)
    assert report.regions()["RepeatedBlock"] == {"instances": 3, "patterns": 2, "graphs": 2}


class BreakingInner(nn.Module):
    """An attention-like submodule whose forward breaks Dynamo's graph (WanAnimate2's RoPE: `grid_sizes.tolist()`)."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(32, 32)
        self.o = nn.Linear(32, 32)

    def forward(self, x):
        h = self.q(x)
        torch._dynamo.graph_break()
        return self.o(h)


class BlockBreakingInside(RepeatedBlock):
    def __init__(self):
        super().__init__()
        self.attn = BreakingInner()

    def forward(self, x):
        return super().forward(x + self.attn(x))


def test_graphs_rooted_inside_the_blocks_count_the_blocks_not_their_submodules():
    """A graph break in a block's submodule roots graphs at that submodule in every instance: the summary counts the
    blocks (2, in one decision pattern), not the blocks and their submodules (4, in 2)."""
    model = stack(2)
    model.blocks = nn.ModuleList(BlockBreakingInside() for _ in range(2))
    torch.compiler.reset()
    regional = lynx_compile.compile_repeated_blocks(model, options=EAGER, blocks=["BlockBreakingInside"])
    _, report = run(regional, batch())
    assert {layer.name for layer in report.sparse_layers} >= {"blocks.0.attn.q", "blocks.1.attn.o", "blocks.1.out"}
    assert report.regions()["BlockBreakingInside"] == {"instances": 2, "patterns": 1, "graphs": 3}
    assert "BlockBreakingInside ×2 in 1 decision pattern(s), 3 graph(s)" in report.summary()


def test_a_whole_model_compile_breaking_inside_its_blocks_does_not_call_its_sparse_layers_dense(caplog):
    model = stack(2)
    model.blocks = nn.ModuleList(BlockBreakingInside() for _ in range(2))
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    policy = Policy({name: LayerPolicy("sparse", "test") for name in names}, options={"n": 2, "m": 4})
    torch.compiler.reset()
    with caplog.at_level("WARNING", logger="lynx_compile"):
        _, report = run(torch.compile(model, backend="lynx", options={**EAGER, "policy": policy}), batch())
    assert report.sparse_layers
    assert not [r for r in caplog.records if "run eagerly, dense" in r.getMessage()]


def test_diffusers_regional_compile_names_the_policys_layers_outside_its_blocks_once(caplog, tmp_path):
    """As diffusers compiles blocks (each in place), with the policy given as a path, which each graph reads again:
    the layers it marks sparse outside the blocks run eagerly, dense, and one warning says so."""
    model = stack(3)
    regions.register_model(model)  # as calibrate does, which made the policy
    path = tmp_path / "policy.json"
    Policy({name: LayerPolicy("sparse", "test") for name in linear_names(model)}, options={"n": 2, "m": 4}).save(path)
    torch.compiler.reset()
    for block in model.blocks:
        block.compile(backend="lynx", options={**EAGER, "policy": str(path)})
    with caplog.at_level("WARNING", logger="lynx_compile"):
        run(model, batch(), batch(1, tokens=40))
    warned = [r.getMessage() for r in caplog.records if "run eagerly, dense" in r.getMessage()]
    assert len(warned) == 1 and "dense: inp, out;" in warned[0], warned


def diffusers_stack(block: type[nn.Module] = RepeatedBlock, count: int = 3) -> nn.Module:
    """Blocks in a diffusers model, for its hooks and its own `compile_repeated_blocks`."""
    from diffusers import ModelMixin

    class Blocks(ModelMixin):
        _repeated_blocks = [block.__name__]

        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(block() for _ in range(count))

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    torch.manual_seed(0)
    return Blocks().eval()


@pytest.mark.parametrize("compiled_as", ["lynx", "diffusers"])
def test_under_layerwise_casting_every_instance_is_reported_and_runs_as_its_policy_says(compiled_as):
    # diffusers' layerwise casting casts a block's weights to the compute dtype just before it runs: when a graph is
    # placed, the instance it was traced on is fp32 and its siblings still bf16, yet Dynamo serves them all with it.
    from diffusers.hooks import apply_layerwise_casting

    def compiled(options):
        torch.compiler.reset()
        model = diffusers_stack()
        apply_layerwise_casting(model, storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
        if compiled_as == "lynx":
            return lynx_compile.compile_repeated_blocks(model, options=options)
        model.compile_repeated_blocks(backend="lynx", options=options)
        return model

    _, report = run(compiled(EAGER), torch.randn(2, 24, 32))
    names = {f"blocks.{i}.{name}" for i in range(3) for name in ("inner", "out")}
    assert {layer.name for layer in report.layers} == names
    policy = lynx_compile.Policy({name: lynx_compile.LayerPolicy("dense" if name == "blocks.1.inner" else "sparse",
                                                                 "test") for name in names})  # fmt: skip
    _, report = run(compiled({**EAGER, "policy": policy}), torch.randn(2, 24, 32))
    decided = rows(report)
    assert decided["blocks.1.inner"] == ("dense", "policy: test") and decided["blocks.2.out"][0] == "sparse"
    if compiled_as == "lynx":  # each decision pattern compiled apart
        assert decided["blocks.0.inner"][0] == "sparse"
    else:  # the hooks break the graph at each linear: one graph of nn.Linear's frame serves all three `inner`s
        assert decided["blocks.0.inner"][0] == "dense" and "treat them differently" in decided["blocks.0.inner"][1]


def test_a_region_compiled_again_for_more_tokens_reports_both_calls_as_a_whole_model_does():
    """A warm-up call with few tokens (under `min_tokens`: dense), then the real one (sparse): each region compiles
    twice. The report shows both graphs' rows, as calls, as whole-model compilation's report does; it used to keep
    the warm-up's rows alone ("0 sparsified" where the real call ran sparse). A recompile whose rows are alike (other
    input strides) is still shown once."""
    warm_up, real = batch(0, tokens=4), batch(1, tokens=24)
    _, whole_report = whole(stack(), EAGER, warm_up, real)
    torch.compiler.reset()
    regional = lynx_compile.compile_repeated_blocks(stack(), options=EAGER)
    _, report = run(regional, warm_up, real)

    def calls(report):  # Dynamo names the symbolic token count of each graph apart
        return sorted((layer.name, layer.call, layer.tokens if isinstance(layer.tokens, int) else "symbolic",
                       layer.decision) for layer in report.layers)  # fmt: skip

    assert calls(report) == calls(whole_report)
    assert {layer.decision for layer in report.layers if layer.call == 2} == {"sparse"}
    assert report.summary().split(",")[0] == whole_report.summary().split(",")[0] == (
        "10/10 linear modules sparsified (10/20 calls)")

    torch.compiler.reset()
    regional = lynx_compile.compile_repeated_blocks(stack(), options=EAGER)
    strided = batch(2).transpose(0, 1).contiguous().transpose(0, 1)  # other strides: `inp` compiles again
    _, twice = run(regional, batch(1), strided)
    assert twice.regions()[OUTSIDE]["graphs"] == twice.regions()[OUTSIDE]["instances"] + 1  # `inp` twice
    assert len(twice.layers) == len({layer.name for layer in twice.layers}) == 10


def test_a_graph_compiled_again_for_other_strides_with_a_symbolic_token_count_is_shown_once():
    """Dynamo names the symbol of each graph's token count apart, and a row's FLOPs are counted at the example size:
    neither makes a recompile's rows differ."""
    torch.compiler.reset()
    regional = lynx_compile.compile_repeated_blocks(stack(2), options=EAGER)
    strided = [batch(seed, tokens=tokens).transpose(0, 1).contiguous().transpose(0, 1)
               for seed, tokens in ((2, 40), (3, 48))]  # fmt: skip
    _, report = run(regional, batch(0, tokens=24), batch(1, tokens=32), *strided)  # static, dynamic, then strides
    assert sorted((layer.name, layer.call, isinstance(layer.tokens, int)) for layer in report.layers) == sorted(
        (name, call, call == 1) for name in ("inp", "out", "blocks.0.inner", "blocks.0.out", "blocks.1.inner",
                                             "blocks.1.out") for call in (1, 2))  # fmt: skip


class GraphBreakingBlock(RepeatedBlock):
    def forward(self, x):
        h = F.gelu(self.inner(x))
        torch._dynamo.graph_break()  # what a hook inside the block does: the frame after it is every region's
        return x + self.out(h)


class GraphBreakingStack(Stack):
    _repeated_blocks = ["GraphBreakingBlock"]

    def __init__(self):
        super().__init__(count=2)
        self.blocks = nn.ModuleList(GraphBreakingBlock() for _ in range(2))


@torch._dynamo.config.patch(recompile_limit=4)
def test_blocks_breaking_the_graph_keep_their_decisions_past_the_shared_frames_recompile_limit():
    """Two decision patterns × two step variants compile the frame after the break four times; a new token count
    reaches Dynamo's recompile limit there, past which Dynamo runs any of the frame's code whose guards pass. With
    every region counted together, block 0 (dense by the policy) then ran block 1's sparse code. Each region's
    compile keeps a budget of its own (torch's isolate_recompiles); a torch without it is warned (below)."""
    if not regional_module().ISOLATED:
        pytest.skip("this torch has no isolate_recompiles")
    torch.manual_seed(0)
    model = GraphBreakingStack().eval()
    dense = {"inp", "out", "blocks.0.inner", "blocks.0.out"}
    policy = Policy({name: LayerPolicy("dense" if name in dense else "sparse", "by hand")
                     for name in linear_names(model)}, type(model).__name__)  # fmt: skip
    schedule = lynx_compile.StepSchedule(sparse_steps=[1])
    lynx_compile.compile_repeated_blocks(model, options={**EAGER, "policy": policy}, steps=schedule)

    def expected(x, step):
        x = model.inp(x)
        for index, block in enumerate(model.blocks):
            sparse = step == 1 and index == 1
            linear = (lambda layer, h: sparse_linear_ref(h, layer.weight, layer.bias, Method())) if sparse else (
                lambda layer, h: layer(h))
            x = x + linear(block.out, F.gelu(linear(block.inner, x)))
        return model.out(x)

    with torch.no_grad():
        for x in (batch(0), batch(1, tokens=40), batch(0)):  # the second reaches the limit
            for step in (0, 1):
                schedule.at(step)
                torch.testing.assert_close(model(x), expected(x, step), rtol=0, atol=0)


def test_a_torch_without_isolate_recompiles_is_warned_where_the_regions_reach_the_recompile_limit(monkeypatch,
                                                                                                 caplog):  # fmt: skip
    monkeypatch.setattr(regional_module(), "ISOLATED", {})
    model, steps = stack(), lynx_compile.StepSchedule(sparse_steps=[1])
    with torch._dynamo.config.patch(recompile_limit=4), caplog.at_level("WARNING", logger="lynx_compile"):
        lynx_compile.compile_repeated_blocks(model, options=EAGER)  # 3 regions: the blocks, inp, out
        lynx_compile.compile_repeated_blocks(model, options=EAGER, steps=steps)  # 6, but nothing breaks the graph
        assert "compiled regions" not in caplog.text
        break_the_graph_at_every_linear(model)
        lynx_compile.compile_repeated_blocks(model, options=EAGER, steps=steps)
    assert "6 compiled regions (sparse and dense step variants)" in caplog.text
    assert "recompile_limit above 6" in caplog.text


def regional_module():
    import sys

    return sys.modules["lynx_compile.regional"]
