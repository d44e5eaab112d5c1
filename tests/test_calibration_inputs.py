"""calibrate with bad input, and with the compile options it will be used with: arguments checked before the model
runs, non-finite outputs refused, include/exclude honoured, the method recorded and enforced at compile time."""

import pytest
import torch
import torch.nn as nn

import lynx_compile
from lynx_compile import OptionError, calibrate


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.mid, self.down = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 32)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.down(torch.relu(self.mid(torch.relu(self.up(x)))))


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return Mlp().eval(), [torch.randn(2, 24, 32) for _ in range(2)]


@pytest.mark.parametrize("target", [float("nan"), -1, "0.1", True, None, float("inf")])
def test_a_bad_target_is_refused_before_the_model_runs(mlp, target):
    model, samples = mlp
    with pytest.raises(OptionError, match="'target' must be a finite number >= 0"):
        calibrate(model, samples, target=target)
    assert model.calls == 0


@pytest.mark.parametrize("arguments, name", [({"lora_rank": -1}, "lora_rank"), ({"lora_rank": 1.5}, "lora_rank"),
                                             ({"ridge": float("nan")}, "ridge"), ({"options": {"n": True}}, "n")])
def test_other_bad_arguments_are_refused_before_the_model_runs(mlp, arguments, name):
    model, samples = mlp
    with pytest.raises(OptionError, match=f"'{name}'"):
        calibrate(model, samples, **arguments)
    assert model.calls == 0


def test_a_sample_with_a_nan_row_is_an_error_not_an_all_dense_policy(mlp):
    model, samples = mlp
    samples[1][0, 5] = float("nan")
    with pytest.raises(ValueError, match="sample 1: the dense model's output holds NaN or Inf"):
        calibrate(model, samples, target=0.5)


def test_include_and_exclude_are_honoured_and_take_no_budget(mlp):
    model, samples = mlp
    everything = calibrate(model, samples, target=10.0)  # so loose that every measured layer fits
    assert {name for name, layer in everything.layers.items() if layer.decision == "sparse"} == {"up", "mid", "down"}

    policy = calibrate(model, samples, target=10.0, options={"exclude": ["mid"]})
    assert (policy.layers["mid"].decision, policy.layers["mid"].reason) == ("dense", "excluded by 'mid'")
    assert policy.layers["mid"].error is None  # never measured, never a candidate
    assert {name for name, layer in policy.layers.items() if layer.decision == "sparse"} == {"up", "down"}

    only_up = calibrate(model, samples, target=10.0, options={"include": ["up"]})
    assert {name: layer.decision for name, layer in only_up.layers.items()} == {
        "up": "sparse", "mid": "dense", "down": "dense"}  # fmt: skip
    assert only_up.layers["down"].reason == "not matched by include"
    assert only_up.model_error < everything.model_error  # its error is that of `up` alone


def test_excluded_layers_leave_the_budget_to_the_others(mlp):
    """`up` has the worst error per FLOP share, so it comes last; at a target between the error of {up, down} and
    that of all three, it fits only when the excluded `mid` no longer spends the budget."""
    model, samples = mlp
    everything = calibrate(model, samples, target=10.0)
    without_mid = calibrate(model, samples, target=10.0, options={"exclude": ["mid"]})
    assert without_mid.model_error < everything.model_error
    target = (without_mid.model_error + everything.model_error) / 2

    def sparse(policy):
        return {name for name, layer in policy.layers.items() if layer.decision == "sparse"}

    assert "up" not in sparse(calibrate(model, samples, target=target))
    assert sparse(calibrate(model, samples, target=target, options={"exclude": ["mid"]})) == {"up", "down"}


def test_a_policy_is_applied_only_with_the_method_it_was_calibrated_with(mlp):
    model, samples = mlp
    options = {"n": 1, "m": 8, "norm_compensation": False}
    policy = calibrate(model, samples, target=10.0, options=options)
    assert {k: policy.options[k] for k in options} == options
    with pytest.raises(OptionError, match=r"calibrated with n=1, m=8, norm_compensation=False, but these options "
                                          r"give n=2, m=4, norm_compensation=True"):
        lynx_compile.explain(model, samples[0], options={"policy": policy})
    report = lynx_compile.explain(model, samples[0], options={"policy": policy, **options})
    assert {layer.name for layer in report.sparse_layers} == {"up", "mid", "down"}
    assert all("1:8 on K," in layer.reason for layer in report.sparse_layers)
    lynx_compile.explain(model, samples[0], options={"policy": policy, **options, "min_tokens": 4})  # not compared


def test_a_layer_the_compiler_keeps_dense_for_its_size_takes_no_budget():
    """A linear with fewer than min_features outputs runs dense when compiled whatever the policy says, so
    calibrate records it dense with the compiler's reason instead of measuring it as sparse."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    samples = [torch.randn(24, 32)]
    policy = calibrate(model, samples, target=10.0, progress_bar=False)
    assert (policy.layers["2"].decision, policy.layers["2"].reason) == ("dense", "features K=64, N=8 < min_features=16")
    assert policy.layers["2"].error is None and policy.layers["0"].decision == "sparse"
    report = lynx_compile.explain(model, samples[0], options={"policy": policy})
    assert {layer.name: layer.decision for layer in report.layers} == {"0": "sparse", "2": "dense"}
    loose = calibrate(model, samples, target=10.0, options={"min_features": 8}, progress_bar=False)
    assert loose.layers["2"].decision == "sparse" and loose.model_error > policy.model_error
