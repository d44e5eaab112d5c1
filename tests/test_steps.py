"""A step schedule (`lynx_compile.StepSchedule`): blocks run sparse at the schedule's steps and dense at the others,
each variant compiled once, switched per step without a recompile; as a diffusers step callback it follows the
pipeline's steps and starts again at step 0."""

import pytest
import torch
import torch.nn.functional as F
from test_regional import batch, stack

import lynx_compile
from lynx_compile.method import Method, sparse_linear_ref


def sparse_reference(model, x):
    """test_regional's stack with every linear sparsified (the ones outside the blocks compile on their own too)."""

    def sparse(layer, x):
        return sparse_linear_ref(x, layer.weight, layer.bias, Method())

    x = sparse(model.inp, x)
    for block in model.blocks:
        x = x + sparse(block.out, F.gelu(sparse(block.inner, x)))
    return sparse(model.out, x)


OPTIONS = {"execution": "simulate", "compiler": "eager"}


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_blocks_run_sparse_at_the_schedules_steps_only_and_never_recompile(compiler):
    torch.manual_seed(0)
    torch.compiler.reset()
    model, x = stack(3), batch()
    schedule = lynx_compile.StepSchedule(sparse_steps=[1, 3])
    lynx_compile.compile_repeated_blocks(model, options={**OPTIONS, "compiler": compiler}, steps=schedule)
    with torch.no_grad():
        dense, sparse = model.forward(x), sparse_reference(model, x)  # `forward`: the uncompiled path
        assert not torch.allclose(dense, sparse, atol=1e-3)  # the two variants differ: the test can tell them apart
        outs = []
        for step in range(5):
            schedule.at(step)
            outs.append(model(x))
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        for step in range(5):  # a second pass through both variants: nothing more to compile
            schedule.at(step)
            torch.testing.assert_close(model(x), outs[step])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    for step, out in enumerate(outs):
        torch.testing.assert_close(out, sparse if step in (1, 3) else dense, rtol=1e-4, atol=1e-4)


def test_a_report_over_a_dense_and_a_sparse_step_holds_the_rows_of_both():
    """Each block instance has a row from each variant that ran (the dense steps' labelled apart), not only the
    first step's."""
    torch.compiler.reset()
    model, x = stack(2), batch()
    schedule = lynx_compile.StepSchedule(sparse_steps=[1])
    lynx_compile.compile_repeated_blocks(model, options=OPTIONS, steps=schedule)
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        for step in (0, 1):
            schedule.at(step)
            model(x)
    for name in ("blocks.0.inner", "blocks.1.out"):
        rows = [layer for layer in report.layers if layer.name == name]
        assert sorted(layer.decision for layer in rows) == ["dense", "sparse"], name
        dense_row = next(layer for layer in rows if layer.decision == "dense")
        assert dense_row.reason == "execution='dense'"
        assert report.graphs[dense_row.graph].region.endswith("(dense steps)")


class Pipe:
    """What a diffusers pipeline shows its step callback: itself (with its step count), the step, the timestep."""

    num_timesteps = 4


def test_as_a_step_callback_it_follows_the_pipeline_and_starts_again_after_the_last_step():
    schedule = lynx_compile.StepSchedule(sparse_steps=range(2, 4))
    seen = []
    for _ in range(2):  # two pipeline calls
        for step in range(Pipe.num_timesteps):
            seen.append(schedule.sparse)
            state = {"latents": torch.ones(1)}
            assert schedule(Pipe(), step, torch.tensor(999 - step), state) is state  # the pipeline's state, untouched
    assert seen == [False, False, True, True] * 2


def test_a_pipeline_that_does_not_say_its_step_count_needs_it_given():
    with pytest.raises(ValueError, match="steps=num_inference_steps"):
        lynx_compile.StepSchedule([0])(object(), 0, None, {})
    schedule = lynx_compile.StepSchedule([0], steps=2)
    schedule(object(), 0, None, {})
    assert schedule.step == 1 and not schedule.sparse
    schedule(object(), 1, None, {})
    assert schedule.step == 0 and schedule.sparse


@pytest.mark.parametrize("sparse_steps, steps", [([-1], None), (["3"], None), ([True], None), ([1], 0), ([1], 2.5)])
def test_bad_schedules_are_refused(sparse_steps, steps):
    with pytest.raises(ValueError, match="StepSchedule"):
        lynx_compile.StepSchedule(sparse_steps, steps=steps)


def test_steps_must_be_a_schedule():
    with pytest.raises(TypeError, match="StepSchedule"):
        lynx_compile.compile_repeated_blocks(stack(), options=OPTIONS, steps=[1, 2])


@pytest.mark.slow
def test_a_diffusers_pipeline_drives_the_schedule_through_its_step_callback():
    """A tiny random FluxPipeline, the schedule as `callback_on_step_end`: each step's transformer call runs the
    variant of that step, in two pipeline calls running."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
    from generate import PIPELINES, load_pipeline, prompt_arguments

    torch.compiler.reset()
    spec = PIPELINES["flux"]
    pipe = load_pipeline(spec, None, torch.float32, "cpu")
    pipe.set_progress_bar_config(disable=True)
    schedule = lynx_compile.StepSchedule(sparse_steps=[1, 2])
    lynx_compile.compile_repeated_blocks(pipe.transformer, options={**OPTIONS, "min_tokens": 1}, steps=schedule)
    variants = []
    pipe.transformer.register_forward_pre_hook(lambda module, args: variants.append(schedule.sparse))
    arguments = dict(prompt_arguments(pipe, spec, "", 0), num_inference_steps=4, height=64, width=64,
                     output_type="latent", callback_on_step_end=schedule)  # fmt: skip
    for _ in range(2):
        pipe(**arguments, generator=torch.Generator().manual_seed(0))
    assert variants == [False, True, True, False] * 2
