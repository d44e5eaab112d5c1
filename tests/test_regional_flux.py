"""Regional compilation of a diffusers FLUX (1 double + 3 single blocks, CPU, simulate), as diffusers users compile it.

One policy, calibrated once on the whole model and saved as JSON (full names), treats the single blocks unalike —
block 0's `proj_out` dense, blocks 1 and 2 all sparse — and keeps the model's top-level `proj_out` dense while the
blocks' `proj_out`s go sparse: a short name that must never match the other module. ``compiler="eager"`` runs the
lynx passes without Inductor's code generation, so whole-model and regional compilation must agree bit for bit.
"""

import pytest
import torch
from zoo import ZOO, build_flux, output_tensor

import lynx_compile
from lynx_compile import Policy, RegionError

pytestmark = pytest.mark.slow

EAGER = {"execution": "simulate", "compiler": "eager"}
SINGLE, DOUBLE = "FluxSingleTransformerBlock", "FluxTransformerBlock"


@pytest.fixture(scope="module")
def steps():
    return [ZOO["flux"].make_inputs(seed) for seed in range(2)]


@pytest.fixture(scope="module")
def calibrated(steps):
    """Every layer that can be pruned sparse (a loose target), the model's own `proj_out` dense."""
    return lynx_compile.calibrate(build_flux(3), steps[:1], target=10.0).with_overrides({"proj_out": "dense"})


@pytest.fixture(scope="module")
def policy_file(calibrated, tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "flux.json"
    calibrated.with_overrides({"single_transformer_blocks.0.proj_out": "dense"}).save(path)
    return path


@pytest.fixture(scope="module")
def whole(policy_file, steps):
    """The whole model compiled with the policy: outputs of both steps and the report."""
    torch.compiler.reset()
    compiled = torch.compile(build_flux(3), backend="lynx", options={**EAGER, "policy": Policy.load(policy_file)})
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        outs = [output_tensor(compiled(**inputs)) for inputs in steps]
    return outs, report


def rows(report):
    return {layer.name: (layer.decision, layer.reason) for layer in report.layers}


def test_a_policy_that_treats_instances_unalike_runs_regionally_as_on_the_whole_model(whole, policy_file, steps):
    expected, whole_report = whole
    torch.compiler.reset()
    model = lynx_compile.compile_repeated_blocks(build_flux(3), options={**EAGER, "policy": str(policy_file)})
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):  # any recompile raises
        with torch.no_grad(), lynx_compile.collect_reports() as report:
            outs = [output_tensor(model(**inputs)) for inputs in steps]
    assert all(torch.equal(out, ref) for out, ref in zip(outs, expected))
    # Every row regional compilation shows is the whole model's; the rest run eagerly, dense as the policy says.
    regional, reference = rows(report), rows(whole_report)
    assert regional == {name: reference[name] for name in regional}
    assert all(reference[name][0] == "dense" for name in set(reference) - set(regional))
    assert [regional[f"single_transformer_blocks.{i}.proj_out"][0] for i in range(3)] == ["dense", "sparse", "sparse"]
    assert "proj_out" not in regional and reference["proj_out"][0] == "dense"
    assert regional["x_embedder"][0] == "sparse"  # outside the blocks, compiled on its own
    regions = report.regions()
    assert regions[SINGLE] == {"instances": 3, "patterns": 2, "graphs": 2}
    assert regions[DOUBLE] == {"instances": 1, "patterns": 1, "graphs": 1}


def test_globs_with_full_names_select_alike_and_explain_names_every_instance(steps):
    options = {"exclude": ["single_transformer_blocks.*.proj_out", "single_transformer_blocks.1.*", "proj_out"]}
    model = build_flux(3)
    whole = lynx_compile.explain(model, **steps[0], options=options)
    lynx_compile.compile_repeated_blocks(model, options=options)
    regional = lynx_compile.explain(model, **steps[0], options=options)
    expected = rows(whole)
    assert rows(regional) == {name: expected[name] for name in rows(regional)}
    assert set(expected) - set(rows(regional)) == {"proj_out"}  # excluded by name: left eager
    assert rows(regional)["single_transformer_blocks.2.proj_out"] == (
        "dense", "excluded by 'single_transformer_blocks.*.proj_out'")  # fmt: skip
    assert rows(regional)["single_transformer_blocks.1.attn.to_q"][1] == "excluded by 'single_transformer_blocks.1.*'"
    assert rows(regional)["single_transformer_blocks.2.attn.to_q"][0] == "sparse"
    assert "FluxSingleTransformerBlock ×3 in 2 decision pattern(s)" in regional.summary()


def test_diffusers_own_regional_compilation_names_in_full_or_refuses(calibrated, policy_file, steps):
    """`model.compile_repeated_blocks(backend="lynx", ...)`, as the issue tried it: the model was calibrated (lynx
    knows it), or is found running on the stack, so names are full, and the single blocks' `proj_out` does not take
    the model's `proj_out` decision; a policy one graph cannot honour is an error naming the way out."""
    model = build_flux(3)
    lynx_compile.calibrate(model, steps[:1], target=0.0)  # registers it, as calibrating it for real would
    torch.compiler.reset()
    model.compile_repeated_blocks(backend="lynx", options={**EAGER, "policy": calibrated})
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        model(**steps[0])
    assert [rows(report)[f"single_transformer_blocks.{i}.proj_out"][0] for i in range(3)] == ["sparse"] * 3
    assert "proj_out" not in rows(report) and report.regions()[SINGLE]["instances"] == 3
    torch.compiler.reset()
    model.compile_repeated_blocks(backend="lynx", options={**EAGER, "policy": Policy.load(policy_file)})
    with pytest.raises(Exception, match=r"one graph serves 3 instances of FluxSingleTransformerBlock.*'proj_out'.*"
                                        r"lynx_compile.compile_repeated_blocks") as caught:  # fmt: skip
        with torch.no_grad():
            model(**steps[0])
    assert isinstance(caught.value.inner_exception, RegionError)
    torch.compiler.reset()
    fresh = build_flux(3)  # never given to lynx: diffusers' call of it is on the stack while its blocks compile
    exclude = ["single_transformer_blocks.*.proj_out"]
    fresh.compile_repeated_blocks(backend="lynx", options={**EAGER, "exclude": exclude})
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        fresh(**steps[0])
    assert [rows(report)[f"single_transformer_blocks.{i}.proj_out"][0] for i in range(3)] == ["dense"] * 3
    assert rows(report)["single_transformer_blocks.2.attn.to_q"][0] == "sparse" and "proj_out" not in rows(report)
    assert all(name.startswith(("transformer_blocks.0.", "single_transformer_blocks.")) for name in rows(report))
    torch.compiler.reset()
    fresh = build_flux(3)
    fresh.compile_repeated_blocks(backend="lynx", options={**EAGER, "policy": Policy.load(policy_file)})
    with pytest.raises(Exception, match=r"one graph serves 3 instances of FluxSingleTransformerBlock"):
        with torch.no_grad():
            fresh(**steps[0])
