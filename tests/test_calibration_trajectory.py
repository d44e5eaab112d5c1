"""calibrate(sampler=): the bound is on the sampled result, measured against the dense sample from the same noise.

The tests apply 2:4 pruning with norm compensation and the LoRA corrections with code of their own (not lynx's
`method`), so that a wrong reference in lynx cannot agree with itself."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lynx_compile import OptionError, Policy, calibrate, pipeline_sampler


class TwoLayers(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.first, self.second = nn.Linear(width, width), nn.Linear(width, width)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.second(torch.tanh(self.first(x)))


def two_step_sampler(noise: torch.Tensor, steps: int = 2):
    """x ← x − ½·model(x), `steps` times from fixed noise: a sampling loop small enough to compute by hand."""

    def sample(model):
        x = noise
        for _ in range(steps):
            x = x - 0.5 * model(x)
        return x

    return sample


def pruned_24(rows: torch.Tensor) -> torch.Tensor:
    """Per row, the 2 largest |x| of every 4 channels, rescaled to the row's norm (norm compensation)."""
    groups = rows.reshape(rows.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, dim=-1).indices, True)
    pruned = (groups * keep).reshape(rows.shape)
    return pruned * (rows.square().sum(1) / (pruned.square().sum(1) + 1e-8)).sqrt()[:, None]


def run_sparse(model, names, run, adapters=None):
    """`run(model)` with the named linears pruned 2:4 (+ norm), corrected by `adapters[name] = (A, B)` if given."""
    adapters = adapters or {}
    modules = dict(model.named_modules())

    def hook(name):
        def replace(module, args, out):
            rows = args[0].reshape(-1, module.in_features)
            y = F.linear(pruned_24(rows), module.weight, module.bias)
            if name in adapters:
                a, b = adapters[name]
                y = y + rows @ b.t() @ a.t()
            return y.reshape(out.shape)

        return replace

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            return run(model)
    finally:
        for handle in handles:
            handle.remove()


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def sparse_names(policy):
    return {name for name, layer in policy.layers.items() if layer.decision == "sparse"}


@pytest.fixture
def two_layers():
    torch.manual_seed(0)
    model = TwoLayers().eval()
    noise = torch.randn(24, 32)
    return model, two_step_sampler(noise), [noise]


def test_the_admitted_layers_are_the_longest_prefix_whose_sampled_error_fits(two_layers):
    model, sampler, samples = two_layers
    with torch.no_grad():
        dense_sample = sampler(model)
    # Equal FLOPs, so the one-step order is by each layer's own output error on the sample.
    one_step = {name: rel(run_sparse(model, [name], lambda m: getattr(m, name)(x)), getattr(model, name)(x))
                for name, x in (("first", samples[0]), ("second", torch.tanh(model.first(samples[0]))))}  # fmt: skip
    order = sorted(one_step, key=one_step.get)
    sampled = [0.0] + [rel(run_sparse(model, order[:k], sampler), dense_sample) for k in (1, 2)]
    assert 0 < sampled[1] < sampled[2]  # the case the test is about: each layer costs sampled error

    for target, admitted in ((sampled[1] / 2, set()), ((sampled[1] + sampled[2]) / 2, {order[0]}),
                             (sampled[2] * 1.01, set(order))):  # fmt: skip
        policy = calibrate(model, samples, sampler=sampler, target=target, progress_bar=False)
        assert sparse_names(policy) == admitted, target
        assert policy.model_error == pytest.approx(sampled[len(admitted)], rel=1e-5, abs=1e-12)
        if admitted:
            mse = (run_sparse(model, admitted, sampler) - dense_sample).square().mean().item()
            expected_psnr = 10 * math.log10((dense_sample.max() - dense_sample.min()).item() ** 2 / mse)
            assert policy.sampled["psnr_db"] == pytest.approx(expected_psnr, rel=1e-4)
        else:
            assert policy.sampled["psnr_db"] is None  # identical to dense
        assert all("on the sampled result" in policy.layers[name].reason for name in policy.layers)


def test_one_step_and_trajectory_bound_different_things(two_layers):
    """The sampled error of both layers is not their one-step error (here the sample, x minus half the output,
    dilutes it); at a target between the two, only the objective with the smaller error admits both."""
    model, sampler, samples = two_layers
    one_step = calibrate(model, samples, target=10.0, progress_bar=False)
    trajectory = calibrate(model, samples, sampler=sampler, target=10.0, progress_bar=False)
    assert sparse_names(one_step) == sparse_names(trajectory) == {"first", "second"}
    assert abs(one_step.model_error - trajectory.model_error) > 0.1 * one_step.model_error
    target = (one_step.model_error + trajectory.model_error) / 2
    strict_sampler = None if one_step.model_error > trajectory.model_error else sampler
    loose_sampler = sampler if strict_sampler is None else None
    assert len(sparse_names(calibrate(model, samples, sampler=strict_sampler, target=target, progress_bar=False))) < 2
    assert sparse_names(calibrate(model, samples, sampler=loose_sampler, target=target, progress_bar=False)) == {
        "first", "second"}  # fmt: skip


def test_trajectory_calibration_is_deterministic_and_round_trips(two_layers, tmp_path):
    model, sampler, _ = two_layers
    first = calibrate(model, sampler=sampler, target=0.3, lora_rank=4, progress_bar=False)
    second = calibrate(model, sampler=sampler, target=0.3, lora_rank=4, progress_bar=False)
    assert first.to_json() == second.to_json() and first.sampled["sampler_runs"] >= 3
    for name in first.adapters:
        assert torch.equal(first.adapters[name].a, second.adapters[name].a)
    first.save(tmp_path / "policy.json")
    assert Policy.load(tmp_path / "policy.json") == first
    assert "sampled" not in calibrate(model, [torch.randn(24, 32)], target=0.3, progress_bar=False).to_dict()


def test_without_samples_the_samplers_own_model_calls_are_measured(two_layers):
    model, sampler, samples = two_layers
    captured = calibrate(model, sampler=sampler, target=10.0, progress_bar=False)
    x1 = samples[0] - 0.5 * model(samples[0]).detach()
    given = calibrate(model, [samples[0], x1], sampler=sampler, target=10.0, progress_bar=False)
    assert captured.to_json() == given.to_json()  # the two calls of the dense trajectory, the same numbers


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), target=st.floats(0.02, 0.6), rank=st.sampled_from([1, 2, 4]),
       steps=st.integers(1, 3))  # fmt: skip
def test_a_lora_policy_never_samples_beyond_its_target(seed, target, rank, steps):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)
    sampler = two_step_sampler(torch.randn(2, 20, 32, generator=generator), steps)
    policy = calibrate(model, sampler=sampler, target=target, lora_rank=rank, progress_bar=False)
    chosen = sparse_names(policy)
    adapters = {name: (policy.adapter_for(name).a, policy.adapter_for(name).b) for name in chosen
                if policy.adapter_for(name) is not None}  # fmt: skip
    with torch.no_grad():
        dense = sampler(model)
    assert policy.model_error <= target
    assert rel(run_sparse(model, chosen, sampler, adapters), dense) <= target * (1 + 1e-6)


def test_pipeline_sampler_reseeds_every_run_and_checks_the_model():
    class Pipeline:
        def __init__(self):
            self.transformer, self.device = TwoLayers().eval(), torch.device("cpu")

        def __call__(self, steps, generator, output_type):
            x = torch.randn(24, 32, generator=generator)
            for _ in range(steps):
                x = x - 0.5 * self.transformer(x)
            return type("Output", (), {"images": x})()

    pipe = Pipeline()
    sampler = pipeline_sampler(pipe, seed=3, steps=2)
    policy = calibrate(pipe.transformer, sampler=sampler, target=0.5, progress_bar=False)
    assert policy.model_error <= 0.5 and pipe.transformer.calls > 2
    with pytest.raises(ValueError, match="not this pipeline's transformer"):
        calibrate(TwoLayers(), sampler=sampler, target=0.5, progress_bar=False)


# ---- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0, 0.0, -0.1, float("nan")])
def test_a_target_that_is_not_positive_is_refused_before_the_model_runs(two_layers, target):
    model, sampler, samples = two_layers
    with pytest.raises(OptionError, match="'target' must be a finite number > 0"):
        calibrate(model, samples, sampler=sampler, target=target)
    assert model.calls == 0


def test_a_sampler_that_is_not_callable_or_absent_with_samples_is_refused(two_layers):
    model, _, _ = two_layers
    with pytest.raises(OptionError, match="'sampler' must be a callable sample"):
        calibrate(model, sampler=torch.zeros(3))
    with pytest.raises(ValueError, match="needs samples, or a sampler"):
        calibrate(model)
    assert model.calls == 0


def bad_samplers(noise):
    runs = []

    def counting(shape_after_first):
        def sample(model):
            runs.append(1)
            out = model(noise)
            return out if len(runs) == 1 else out[:shape_after_first]

        return sample

    return {
        "returns a list": (lambda m: [m(noise)], "must return a tensor.*returned list"),
        "returns NaN": (lambda m: m(noise) * float("nan"), "dense model holds NaN or Inf"),
        "changes shape": (counting(5), r"changed shape: \(24, 32\) with the dense model, \(5, 32\)"),
        "draws fresh noise": (lambda m: m(torch.randn(24, 32)), "not deterministic"),
        "never calls the model": (lambda m: noise.clone(), "never called the model"),
    }


@pytest.mark.parametrize("case", ["returns a list", "returns NaN", "changes shape", "draws fresh noise",
                                  "never calls the model"])  # fmt: skip
def test_a_bad_sampler_is_a_clear_error(two_layers, case):
    model, _, samples = two_layers
    sampler, message = bad_samplers(samples[0])[case]
    with pytest.raises(ValueError, match=message):
        calibrate(model, samples, sampler=sampler, target=0.2, progress_bar=False)
