"""calibrate → Policy → compile: measured, reproducible decisions that the backend applies exactly."""

import logging

import pytest
import torch
from zoo import ZOO

import lynx_compile
from lynx_compile import LayerPolicy, LoraAdapter, Policy, calibrate


@pytest.fixture(scope="module")
def dit():
    entry = ZOO["dit"]
    return entry.build(), [entry.make_inputs(seed) for seed in range(2)]


@pytest.fixture(scope="module")
def policy(dit):
    model, samples = dit
    return calibrate(model, samples, target=0.3)


def test_calibration_is_deterministic(dit, policy):
    model, samples = dit
    assert calibrate(model, samples, target=0.3).to_json() == policy.to_json()


def test_chosen_layers_meet_the_target_and_a_looser_target_takes_more(dit, policy):
    model, samples = dit
    sparse = {name for name, layer in policy.layers.items() if layer.decision == "sparse"}
    assert sparse and policy.model_error <= policy.target
    looser = calibrate(model, samples, target=0.6)
    assert sparse <= {name for name, layer in looser.layers.items() if layer.decision == "sparse"}
    assert looser.model_error <= 0.6
    assert calibrate(model, samples, target=0.0).model_error == 0.0  # nothing may change the output


def test_per_layer_numbers_are_recorded(policy):
    measured = [layer for layer in policy.layers.values() if layer.error is not None]
    assert measured and all(layer.error >= 0 and layer.error_without_norm >= 0 for layer in measured)
    assert abs(sum(layer.flop_share for layer in policy.layers.values()) - 1) < 1e-9
    assert policy.model_class == "DiTTransformer2DModel" and policy.lynx_version == lynx_compile.__version__


def test_json_round_trip(policy, tmp_path):
    path = tmp_path / "policy.json"
    policy.save(path)
    assert Policy.load(path) == policy


def test_overrides_win_and_say_so(policy):
    overridden = policy.with_overrides({"transformer_blocks.0.*": "dense", "transformer_blocks.1.ff.*": "sparse"})
    for name, layer in overridden.layers.items():
        if name.startswith("transformer_blocks.0."):
            assert layer.decision == "dense" and layer.reason == "override 'transformer_blocks.0.*'"
        elif name.startswith("transformer_blocks.1.ff."):
            assert layer.decision == "sparse" and "override" in layer.reason
        else:
            assert layer == policy.layers[name]
    with pytest.raises(ValueError, match="override decision"):
        policy.with_overrides({"*": "maybe"})


def test_an_override_by_full_name_adds_a_layer_the_policy_lacks(policy, caplog):
    """The README's answer to "not in the policy": a full name adds the layer; a glob that matches nothing says so."""
    added = policy.with_overrides({"never.reached": "sparse"})
    assert added.layers["never.reached"].decision == "sparse" and "never.reached" not in policy.layers
    assert added.decision_for("never.reached").decision == "sparse"
    with caplog.at_level("WARNING", logger="lynx_compile.policy"):
        assert policy.with_overrides({"never.*": "sparse"}).layers == policy.layers
    assert "matches no layer of the policy" in caplog.text


def test_compiled_decisions_are_exactly_the_policy(dit, policy, tmp_path):
    model, samples = dit
    path = tmp_path / "policy.json"
    policy.save(path)
    for given in (policy, str(path)):
        report = lynx_compile.explain(model, **samples[0], options={"policy": given})
        assert {layer.name: layer.decision for layer in report.layers} == {
            name: layer.decision for name, layer in policy.layers.items()}  # fmt: skip
        assert all("policy:" in layer.reason for layer in report.layers if layer.decision == "sparse")


def test_a_stale_policy_warns_and_keeps_unnamed_layers_dense(dit, policy, caplog):
    model, samples = dit
    layers = dict(policy.layers)
    dropped = next(name for name, layer in layers.items() if layer.decision == "sparse")
    del layers[dropped]
    layers["ghost.layer"] = LayerPolicy("sparse", "from another model")
    stale = Policy(layers, policy.model_class, policy.lynx_version, policy.options, policy.target)
    with caplog.at_level(logging.WARNING, logger="lynx_compile"):
        report = lynx_compile.explain(model, **samples[0], options={"policy": stale})
    assert "does not name 1 linear" in caplog.text and "ghost.layer" in caplog.text
    (record,) = [layer for layer in report.layers if layer.name == dropped]
    assert (record.decision, record.reason) == ("dense", "not in the policy")


def test_calibrate_needs_samples(dit):
    with pytest.raises(ValueError, match="at least one sample"):
        calibrate(dit[0], [])


def test_progress_is_reported(dit, capfd):
    model, samples = dit
    lines, forward_calls = [], []
    handle = model.register_forward_pre_hook(lambda module, args: forward_calls.append(1))
    try:
        calibrate(model, samples, target=0.3, progress=lines.append)
    finally:
        handle.remove()
    assert lines[0].startswith("calibrate: measuring") and any("fit the target" in line for line in lines[1:])
    bar = capfd.readouterr().err.split("\r")[-1]  # tqdm redraws its line; the last one is the closed bar
    assert bar.startswith("lynx calibrate: 100%") and f" {len(forward_calls)}/{len(forward_calls)} " in bar
    calibrate(model, samples, target=0.3, progress_bar=False)
    assert "lynx calibrate" not in capfd.readouterr().err


def test_policies_whose_corrections_differ_are_not_equal(policy):
    """torch.compile serves a graph compiled under equal options: a policy with other adapters must not compare
    equal, or recompiling with it would run the first policy's corrections."""
    name = next(iter(policy.layers))
    first = policy._replace(dict(policy.layers), {name: LoraAdapter(torch.ones(4, 2), torch.ones(2, 8))})
    same = policy._replace(dict(policy.layers), {name: LoraAdapter(torch.ones(4, 2), torch.ones(2, 8))})
    other = policy._replace(dict(policy.layers), {name: LoraAdapter(2 * torch.ones(4, 2), torch.ones(2, 8))})
    assert first == same and first != other and first != policy


class ScaledLinear(torch.nn.Module):
    """WanAnimate's `MotionLinear`: `F.linear` over its weight times a scale, which is no `nn.Linear` for calibrate
    and stays dense (lynx rewrites linears over a module's own weight)."""

    def __init__(self, width):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(width, width) / width**0.5)
        self.scale = width**-0.5

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight * self.scale)


class WithScaledLinear(torch.nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.motion, self.proj = ScaledLinear(width), torch.nn.Linear(width, width)

    def forward(self, x):
        return self.proj(torch.nn.functional.gelu(self.motion(x)))


def test_a_linear_calibrate_cannot_name_keeps_its_own_reason_under_a_policy_without_a_warning(caplog):
    model, x = WithScaledLinear().eval(), torch.randn(2, 24, 32)
    policy = calibrate(model, [{"x": x}], target=10.0)
    assert list(policy.layers) == ["proj"]
    with caplog.at_level(logging.WARNING, logger="lynx_compile"):
        report = lynx_compile.explain(model, x, options={"policy": policy})
    reasons = {layer.name: layer.reason for layer in report.layers}
    assert reasons["motion"].startswith("its weight is the parameter put through"), reasons
    assert "does not name" not in caplog.text
