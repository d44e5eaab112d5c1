"""The public API's arguments: a wrong one is a clear error naming it, raised before any model call or compile
work, and never undoes what was there; a single name where a list goes is one name, not its letters."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lynx_compile
from lynx_compile import LoraAdapter, OptionError, Policy, StepSchedule, calibrate, fit_lora, parse_options
from lynx_compile.config import LynxConfig

EAGER = {"compiler": "eager"}


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.out = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x):
        return x + self.out(F.gelu(self.inner(x)))


class Stack(nn.Module):
    _repeated_blocks = ["Block"]

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        for block in self.blocks:
            x = block(x)
        return x


def samples():
    return [torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(index)) for index in range(2)]


@pytest.mark.parametrize("mode", [""])  # torch reads "" as no mode and returns every mode's settings
def test_a_mode_that_is_no_mode_is_refused_when_the_options_are_read(mode):
    with pytest.raises(OptionError, match="'mode' must be one of torch.compile's modes"):
        parse_options({"mode": mode})


@pytest.mark.parametrize("options, mode", [({"mode": "max-autotune"}, "reduce-overhead"),
                                           (LynxConfig(mode="max-autotune"), "reduce-overhead")])  # fmt: skip
def test_an_option_given_twice_must_say_the_same(options, mode):
    with pytest.raises(OptionError, match="'mode' is given twice"):
        parse_options(options, mode=mode)
    assert parse_options(options, mode="max-autotune").mode == "max-autotune"
    with pytest.raises(OptionError, match="'max_autotune' is given twice"):
        parse_options({"inductor": {"max_autotune": True}, "max_autotune": False})


def test_one_name_where_a_list_goes_is_that_name():
    torch.manual_seed(0)
    model = Stack().eval()
    lynx_compile.compile_repeated_blocks(model, options=EAGER, blocks="Block")
    assert [path for path, module in model.named_modules() if module.__dict__.get("_compiled_call_impl")] == [
        "blocks.0", "blocks.1"]
    solutions = fit_lora(Stack().eval(), samples(), rank=2, layers="blocks.0.inner", progress_bar=False)
    assert list(solutions) == ["blocks.0.inner"]


def test_a_model_naming_no_repeated_blocks_is_told_which_classes_its_lists_repeat():
    """diffusers' DiT, PixArt and SD3 list no `_repeated_blocks`: the error names what `blocks=` could take."""

    class Unlisted(Stack):
        _repeated_blocks = []

    with pytest.raises(ValueError, match=r"pass blocks=\[class names\] \(its module lists repeat Block ×2\)"):
        lynx_compile.compile_repeated_blocks(Unlisted(), options=EAGER)
    leaves = nn.Sequential(Block(), nn.ModuleList([Block()]), nn.ModuleList([nn.Linear(32, 32), nn.Linear(32, 32)]))
    with pytest.raises(ValueError, match=r"pass blocks=\[class names\]$"):  # no block repeated: nothing to suggest
        lynx_compile.compile_repeated_blocks(leaves, options=EAGER)
    lynx_compile.compile_repeated_blocks(model := Unlisted(), options=EAGER, blocks=["Block"])
    assert [path for path, module in model.named_modules() if module.__dict__.get("_compiled_call_impl")] == [
        "blocks.0", "blocks.1"]


@pytest.mark.parametrize("kwargs", [{"fulgraph": True}, {"dynamic": "yes"}])
def test_a_recompile_torch_refuses_leaves_the_earlier_compilation_in_place(kwargs):
    model = Stack().eval()
    lynx_compile.compile_repeated_blocks(model, options=EAGER)
    compiled = [path for path, module in model.named_modules() if module.__dict__.get("_compiled_call_impl")]
    with pytest.raises(TypeError, match="torch.compile refuses"):
        lynx_compile.compile_repeated_blocks(model, options=EAGER, **kwargs)
    assert [path for path, module in model.named_modules() if module.__dict__.get("_compiled_call_impl")] == compiled


@pytest.mark.parametrize("call", [lambda model, x: lynx_compile.calibrate(model, [x], progress=True),
                                  lambda model, x: lynx_compile.fit_lora(model, [x], progress_bar="no"),
                                  lambda model, x: lynx_compile.explain(model, x, fullgraph="no"),
                                  lambda model, x: lynx_compile.calibrate(model, [x], target=10**400)])  # fmt: skip
def test_wrong_arguments_are_refused_before_the_model_runs(call):
    model = Stack().eval()
    with pytest.raises(OptionError):
        call(model, samples()[0])
    assert model.calls == 0


@pytest.mark.parametrize("call", [lambda: calibrate(None, samples()), lambda: fit_lora(lambda x: x, samples()),
                                  lambda: lynx_compile.compile_repeated_blocks(None)])  # fmt: skip
def test_something_other_than_a_model_is_a_type_error_naming_it(call):
    with pytest.raises(TypeError, match="takes the model as an nn.Module"):
        call()


def test_a_step_schedule_checks_every_step_it_is_given():
    schedule = StepSchedule([0, 2], steps=4)
    for step in (-1, "1", None, 2.5, True):
        with pytest.raises(ValueError, match="a step index"):
            schedule.at(step)
    schedule.at(torch.tensor(2))  # what stands for an index
    assert schedule.sparse and schedule.step == 2 and isinstance(schedule.step, int)
    with pytest.raises(ValueError, match="StepSchedule: steps' must be an int >= 1"):
        StepSchedule([0], steps=True)
    with pytest.raises(TypeError, match="an iterable of step indices"):
        StepSchedule(5)


def test_adapters_are_tensors_compared_by_value():
    a, b = torch.randn(4, 2), torch.randn(2, 3)
    with pytest.raises(TypeError, match="takes two tensors"):
        LoraAdapter([[1.0]], [[1.0]])
    assert LoraAdapter(a, b) == LoraAdapter(a.clone(), b.clone()) and LoraAdapter(a, b) != LoraAdapter(a, b + 1)
    for rank in (1.5, True, 3):
        with pytest.raises(ValueError, match="cannot truncate"):
            LoraAdapter(a, b).truncated(rank)


def test_policy_arguments_are_checked():
    with pytest.raises(lynx_compile.PolicyError, match="field 'adapters'"):
        Policy(adapters={"up": 3})
    policy = Policy({"up": lynx_compile.LayerPolicy("sparse", "measured")})
    with pytest.raises(TypeError, match="with_lora takes a dict"):
        policy.with_lora([], rank=1)
    with pytest.raises(OptionError, match="'rank' must be an int >= 0"):
        policy.with_lora({}, rank=1.5)
    with pytest.raises(TypeError, match="with_measurements takes a dict"):
        policy.with_measurements(None)
    with pytest.raises(TypeError, match="a layer name is a str"):
        policy.decision_for(None)


def test_a_saved_policy_keeps_the_fit_of_a_layer_turned_down_to_rank_0(tmp_path):
    layers = {"up": lynx_compile.LayerPolicy("sparse", "measured", lora_rank=0)}
    policy = Policy(layers, "Model", "0.1.0", adapters={"up": LoraAdapter(torch.randn(4, 2), torch.randn(2, 3))})
    policy.save(tmp_path / "policy.json")
    loaded = Policy.load(tmp_path / "policy.json")
    assert loaded == policy and loaded.adapters["up"] == policy.adapters["up"]


def test_a_pipeline_sampler_checks_its_arguments_when_made():
    with pytest.raises(OptionError, match="'seed' must be an int"):
        lynx_compile.pipeline_sampler(lambda **kwargs: None, seed="1")
    with pytest.raises(TypeError, match="seeds a generator of its own"):
        lynx_compile.pipeline_sampler(lambda **kwargs: None, generator=torch.Generator())
    with pytest.raises(TypeError, match="takes a diffusers pipeline"):
        lynx_compile.pipeline_sampler(None)
