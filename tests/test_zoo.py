"""The lynx backend end to end on the tiny diffusers zoo (CPU, fp32, random weights).

Per model, compiled once each way and shared by the tests below (compiles dominate: ~20 s each on 2 cores):
- lynx simulate with fullgraph=True, its decisions collected;
- lynx execution="dense";
- explain();
- eager references: the plain model, and the model with module hooks that prune + compensate exactly the inputs of
  the linears lynx decided sparse — an independent re-implementation of the method.
"""

import functools
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import lynx_compile
from lynx_compile.config import LynxConfig
from lynx_compile.kernels.nm_prune import nm_prune_ref

from zoo import ZOO, output_tensor

pytestmark = pytest.mark.slow


@dataclass
class ZooRun:
    linear_calls: list[str]  # names of nn.Linear modules in call order, from eager forward hooks
    linear_names: set[str]
    block_linear_names: set[str]
    eager: torch.Tensor
    simulate: torch.Tensor
    simulate_report: lynx_compile.Report
    hooked_reference: torch.Tensor
    dense: torch.Tensor
    dense_report: lynx_compile.Report
    explained: lynx_compile.Report


def call_linears_in_order(model, inputs):
    calls = []
    handles = [module.register_forward_hook(lambda mod, args, out, name=name: calls.append(name))
               for name, module in model.named_modules() if isinstance(module, nn.Linear)]  # fmt: skip
    with torch.no_grad():
        out = output_tensor(model(**inputs))
    for handle in handles:
        handle.remove()
    return calls, out


def run_with_pruning_hooks(model, inputs, sparse_names, config=LynxConfig()):
    """Eager model where each named linear sees s·x̃ instead of x: the method, applied by hand."""

    def prune_input(module, args):
        (x,) = args
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] < config.min_tokens:
            return None
        pruned, scale = nm_prune_ref(rows, config.n, config.m)
        return ((pruned * scale[:, None]).reshape(x.shape),)

    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_pre_hook(prune_input) for name in sparse_names]
    with torch.no_grad():
        out = output_tensor(model(**inputs))
    for handle in handles:
        handle.remove()
    return out


def compile_and_run(model, inputs, **options):
    torch.compiler.reset()
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        out = output_tensor(torch.compile(model, backend="lynx", fullgraph=True, options=options)(**inputs))
    return out, report


@functools.cache
def zoo_run(name) -> ZooRun:
    entry = ZOO[name]
    model, inputs = entry.build(), entry.make_inputs(0)
    calls, eager = call_linears_in_order(model, inputs)
    simulate, simulate_report = compile_and_run(model, inputs)
    dense, dense_report = compile_and_run(model, inputs, execution="dense")
    torch.compiler.reset()
    explained = lynx_compile.explain(model, **inputs)
    sparse_names = {layer.name for layer in simulate_report.sparse_layers}
    return ZooRun(
        linear_calls=calls, linear_names=set(calls),
        block_linear_names={c for c in calls if c.startswith(entry.block_prefixes)},
        eager=eager, simulate=simulate, simulate_report=simulate_report,
        hooked_reference=run_with_pruning_hooks(model, inputs, sparse_names),
        dense=dense, dense_report=dense_report, explained=explained,
    )  # fmt: skip


MODELS = sorted(ZOO)


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", MODELS)
def test_every_linear_call_is_matched_with_its_name(name):
    run = zoo_run(name)
    assert len(run.simulate_report.graphs) == 1  # fullgraph=True held
    matched = [layer.name for layer in run.simulate_report.layers]
    assert sorted(matched) == sorted(run.linear_calls)  # one record per call, none invented, none missed
    assert run.block_linear_names and run.block_linear_names <= set(matched)


@pytest.mark.parametrize("name", MODELS)
def test_block_linears_are_sparse_and_per_sample_linears_dense(name):
    run = zoo_run(name)
    for layer in run.simulate_report.layers:
        tokens = layer.tokens if isinstance(layer.tokens, int) else None
        if tokens is not None and tokens < LynxConfig().min_tokens:
            assert layer.decision == "dense" and layer.reason.startswith("tokens M=")
        else:
            assert layer.decision == "sparse", (layer.name, layer.reason)
    block_decisions = {l.decision for l in run.simulate_report.layers if l.name.startswith(ZOO[name].block_prefixes)}
    assert "sparse" in block_decisions
    assert run.simulate_report.sparse_flop_share > 0.5


@pytest.mark.parametrize("name", MODELS)
def test_dense_execution_equals_the_uncompiled_model(name):
    run = zoo_run(name)
    assert all(layer.decision == "dense" and layer.reason == "execution='dense'" for layer in run.dense_report.layers)
    torch.testing.assert_close(run.dense, run.eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_simulate_equals_an_eager_reimplementation_of_the_method(name):
    run = zoo_run(name)
    # Masks are discontinuous: a rounding difference upstream may flip a near-tie, so compare whole-output norms.
    assert relative_error(run.simulate, run.hooked_reference) < 1e-3
    assert relative_error(run.simulate, run.eager) > 1e-2  # pruning really happened
    assert torch.isfinite(run.simulate).all()


@pytest.mark.parametrize("name", MODELS)
def test_explain_matches_what_ran(name):
    run = zoo_run(name)
    explained = [(l.name, l.tokens, l.in_features, l.out_features, l.decision, l.reason) for l in run.explained.layers]
    compiled = [(l.name, l.tokens, l.in_features, l.out_features, l.decision, l.reason)
                for l in run.simulate_report.layers]  # fmt: skip
    assert explained == compiled
    assert abs(sum(layer.flop_share for layer in run.explained.layers) - 1) < 1e-9


def test_explain_table_on_flux_names_every_block_linear_with_a_reason():
    run = zoo_run("flux")
    table = str(run.explained)
    for name in run.block_linear_names:
        assert name in table
    assert all(layer.reason for layer in run.explained.layers)
    assert table.splitlines()[-1] == run.explained.summary()
    assert "single_transformer_blocks.0.proj_out" in table and "transformer_blocks.0.ff.net.2" in table
    assert run.explained.to_json().count('"decision"') == len(run.explained.layers)
    assert "lynx.sparse_linear" in run.explained.graphs[0].after and "lynx" not in run.explained.graphs[0].before


def test_exclude_glob_keeps_named_layers_dense():
    entry = ZOO["flux"]
    model, inputs = entry.build(), entry.make_inputs(0)
    report = lynx_compile.explain(model, **inputs, options={"exclude": ["single_transformer_blocks.*.proj_out"]})
    (proj_out,) = [layer for layer in report.layers if layer.name == "single_transformer_blocks.0.proj_out"]
    assert (proj_out.decision, proj_out.reason) == ("dense", "excluded by 'single_transformer_blocks.*.proj_out'")
    assert len(report.sparse_layers) == len(zoo_run("flux").simulate_report.sparse_layers) - 1
