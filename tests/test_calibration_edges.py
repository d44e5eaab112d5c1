"""calibrate on models as users write them, beyond the plain MLP: linears called by keyword, outputs of every form,
train mode, fp64, tied weights, nn.Linear subclasses, autocast; and the policy it writes compiled as it says."""

import dataclasses

import pytest
import torch
import torch.nn as nn

import lynx_compile
from lynx_compile import calibrate
from lynx_compile.eager import first_tensor, sparsified
from lynx_compile.method import Method

EAGER = {"compiler": "eager"}


class Mlp(nn.Module):
    def __init__(self, dim=32, wrap=lambda out: out):
        super().__init__()
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.wrap = wrap

    def forward(self, x):
        return self.wrap(self.down(input=torch.relu(self.up(input=x))))  # by keyword, as some models call them


def samples(dim=32, count=2):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(2, 24, dim, generator=generator) for _ in range(count)]


def decisions(policy):
    return {name: layer.decision for name, layer in policy.layers.items()}


def test_linears_called_by_keyword_are_measured_and_corrected():
    torch.manual_seed(0)
    model = Mlp().eval()
    policy = calibrate(model, samples(), target=10.0, lora_rank=2, progress_bar=False)
    assert decisions(policy) == {"up": "sparse", "down": "sparse"} and policy.adapters


@dataclasses.dataclass
class Output:
    hidden: torch.Tensor


@pytest.mark.parametrize("wrap", [lambda out: {"out": out}, lambda out: Output(out), lambda out: (None, out),
                                  lambda out: [{"a": None, "b": (out,)}]])  # fmt: skip
def test_the_first_tensor_of_any_output_form_is_what_calibration_bounds(wrap):
    torch.manual_seed(0)
    model, plain = Mlp(wrap=wrap).eval(), Mlp().eval()
    plain.load_state_dict(model.state_dict())
    x = samples()
    assert torch.equal(first_tensor(model(x[0])), plain(x[0]))
    assert calibrate(model, x, target=0.3, progress_bar=False).model_error == pytest.approx(
        calibrate(plain, x, target=0.3, progress_bar=False).model_error)
    with pytest.raises(TypeError, match="holds no tensor"):
        first_tensor({"a": None, "b": (1, "x")})


@pytest.mark.parametrize("single", [torch.randn(2, 24, 32), {"x": torch.randn(2, 24, 32)}])
def test_one_call_given_as_samples_is_a_clear_error_not_its_rows_or_keys(single):
    with pytest.raises(TypeError, match="samples as a list of calls .* pass \\[sample\\]"):
        calibrate(Mlp().eval(), single, target=0.3, progress_bar=False)


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)
        self.drop, self.norm = nn.Dropout(0.5), nn.BatchNorm1d(24)

    def forward(self, x):
        return self.down(self.drop(torch.relu(self.up(self.norm(x)))))


def test_a_model_in_train_mode_is_calibrated_in_eval_mode_and_left_as_it_was():
    torch.manual_seed(0)
    model = Noisy()  # train mode, as nn.Module starts
    statistics = model.norm.running_mean.clone()
    first, second = (calibrate(model, samples(), target=0.2, progress_bar=False) for _ in range(2))
    assert first.to_dict() == second.to_dict()  # deterministic: dropout off
    assert torch.equal(model.norm.running_mean, statistics) and model.norm.num_batches_tracked == 0
    assert all(module.training for module in model.modules())


def test_layers_in_a_dtype_lynx_does_not_prune_are_recorded_dense_as_compiling_keeps_them():
    torch.manual_seed(0)
    model, x = Mlp().double().eval(), [t.double() for t in samples()]
    policy = calibrate(model, x, target=1.0, progress_bar=False)
    assert {layer.reason for layer in policy.layers.values()} == {"dtype torch.float64 unsupported"}
    report = lynx_compile.explain(model, x[0], options={"policy": policy, **EAGER})
    assert [layer.decision for layer in report.layers] == ["dense", "dense"]


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.c(self.b(torch.relu(self.a(x))))


def test_tied_linears_are_recorded_dense_and_the_policy_runs_as_it_says():
    torch.manual_seed(0)
    model, x = Tied().eval(), samples()
    policy = calibrate(model, x, target=10.0, progress_bar=False)
    assert decisions(policy) == {"a": "dense", "b": "dense", "c": "sparse"}
    assert "its weight is tied to that of 'b'" in policy.layers["a"].reason
    with torch.no_grad(), lynx_compile.collect_reports(model) as report:
        out = torch.compile(model, backend="lynx", options={"policy": policy, **EAGER})(x[0])
    assert {layer.name for layer in report.sparse_layers} == {"c"} and report.outside == []
    with torch.no_grad(), sparsified({"c": model.c}, Method()):
        torch.testing.assert_close(out, model(x[0]))


class Tripled(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 3


def test_a_linear_subclass_with_its_own_forward_is_recorded_dense_not_mismeasured():
    model = nn.Sequential(Tripled(32, 64), nn.ReLU(), nn.Linear(64, 32)).eval()
    policy = calibrate(model, samples(), target=10.0, progress_bar=False)
    assert decisions(policy) == {"0": "dense", "2": "sparse"} and "Tripled" in policy.layers["0"].reason


def test_under_autocast_the_eager_reference_computes_and_returns_as_the_compiled_op():
    torch.manual_seed(0)
    model, x = Mlp().eval(), samples()[0]
    layers = {"up": model.up, "down": model.down}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        compiled = torch.compile(model, backend="lynx", options=EAGER)(x)
        with sparsified(layers, Method()):
            reference = model(x)
    assert reference.dtype == compiled.dtype == torch.bfloat16
    torch.testing.assert_close(reference, compiled, rtol=0, atol=0)


class Unrelated(nn.Module):  # another class, the same layer names
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def test_a_policy_applied_to_another_class_with_its_layer_names_decides_as_explain_in_either_order():
    torch.manual_seed(0)
    policy = calibrate(Mlp().eval(), samples(), target=10.0, progress_bar=False)
    x = samples()[0]
    compiled_first = Unrelated().eval()
    with torch.no_grad(), lynx_compile.collect_reports(compiled_first) as report:
        torch.compile(compiled_first, backend="lynx", options={"policy": policy, **EAGER})(x)
    explained = lynx_compile.explain(Unrelated().eval(), x, options={"policy": policy, **EAGER})
    assert [(layer.name, layer.decision) for layer in report.layers] == [("up", "sparse"), ("down", "sparse")]
    assert [(layer.name, layer.decision) for layer in explained.layers] == [("up", "sparse"), ("down", "sparse")]


class ScaledByKeyword(nn.Linear):
    def forward(self, hidden, scale=1.0):  # its input by another name
        return super().forward(hidden) * scale


class CallsByKeyword(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj, self.out = ScaledByKeyword(32, 64), nn.Linear(64, 32)

    def forward(self, x):
        return self.out(self.proj(hidden=x, scale=2.0))


def test_a_subclass_called_by_its_own_keyword_is_recorded_dense_and_fit_lora_keeps_the_mode():
    policy = calibrate(CallsByKeyword().eval(), samples(), target=10.0, progress_bar=False)
    assert decisions(policy) == {"proj": "dense", "out": "sparse"}
    model = Noisy()  # train mode
    lynx_compile.fit_lora(model, samples(), rank=2, progress_bar=False)
    assert model.norm.num_batches_tracked == 0 and all(module.training for module in model.modules())
