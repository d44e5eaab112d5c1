"""The closed-form LoRA correction: its math against brute force, its storage, and its place in the compiled graph."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo import ZOO, output_tensor

import lynx_compile
from lynx_compile import Policy, calibrate, fit_lora
from lynx_compile.kernels.nm_prune import nm_prune_ref
from lynx_compile.lora import LoraAdapter, ResidualStatistics, adapter_error, solve_lora
from lynx_compile.method import Method, pruning_residual
from lynx_compile.policy import adapters_path


def statistics_of(x, d, weight):
    stats = ResidualStatistics(x.shape[1], x.device)
    stats.accumulate(x, d, x @ weight.t(), weight)
    return stats


def brute_force_error(x, d, weight, rank, ridge):
    """Reduced-rank ridge regression straight from its definition: least squares on the data augmented with √λ·I,
    then the fitted values' top-`rank` right singular directions. Returns ‖R − X·Cᵀ‖ / ‖X·Wᵀ‖."""
    k, n = x.shape[1], weight.shape[0]
    lam = ridge * x.square().sum(0).mean()
    x_aug = torch.cat([x, lam.sqrt() * torch.eye(k, dtype=x.dtype)])
    r = d @ weight.t()
    c_t = torch.linalg.lstsq(x_aug, torch.cat([r, torch.zeros(k, n, dtype=x.dtype)])).solution
    _, _, vh = torch.linalg.svd(x_aug @ c_t, full_matrices=False)
    c_t = c_t @ vh[:rank].t() @ vh[:rank]
    return ((r - x @ c_t).norm() / (x @ weight.t()).norm()).item()


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(4, 80), k=st.integers(2, 24), n=st.integers(1, 24), rank=st.integers(0, 30),
       ridge=st.sampled_from([1e-9, 1e-4, 1e-1]), seed=st.integers(0, 2**16))  # fmt: skip
def test_the_solution_is_the_reduced_rank_optimum(tokens, k, n, rank, ridge, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, k, generator=g, dtype=torch.float64)
    d = torch.randn(tokens, k, generator=g, dtype=torch.float64) * torch.rand(k, generator=g, dtype=torch.float64)
    weight = torch.randn(n, k, generator=g, dtype=torch.float64)
    solution = solve_lora(weight, statistics_of(x, d, weight), rank, ridge)

    used = min(rank, n, k)
    assert solution.rank == used and len(solution.errors) == used + 1
    a, b = solution.adapter.a.double(), solution.adapter.b.double()
    measured = ((d @ weight.t() - x @ b.t() @ a.t()).norm() / (x @ weight.t()).norm()).item()
    expected = brute_force_error(x, d, weight, used, ridge)
    assert solution.errors[-1] == pytest.approx(measured, rel=1e-4, abs=1e-6)  # the error bookkeeping is right
    assert measured == pytest.approx(expected, rel=1e-4, abs=1e-6)  # and the fit is the optimum
    assert all(later <= earlier + 1e-9 for earlier, later in zip(solution.errors, solution.errors[1:]))


@pytest.mark.parametrize("k, n", [(16, 8), (8, 16)])  # both eigenproblem branches: N ≤ K and N > K
def test_an_exactly_low_rank_residual_is_recovered(k, n):
    g = torch.Generator().manual_seed(k * n)
    x = torch.randn(200, k, generator=g, dtype=torch.float64)
    weight = torch.randn(n, k, generator=g, dtype=torch.float64)
    mixing = torch.randn(k, 2, generator=g, dtype=torch.float64) @ torch.randn(2, k, generator=g, dtype=torch.float64)
    d = x @ mixing.t()  # so R = X·(W·G)ᵀ with W·G of rank 2
    solution = solve_lora(weight, statistics_of(x, d, weight), rank=2, ridge=1e-12)
    product = solution.adapter.a.double() @ solution.adapter.b.double()
    torch.testing.assert_close(product, weight @ mixing, rtol=1e-4, atol=1e-4)
    assert solution.errors[0] > 0.1 and solution.errors[2] < 1e-5


def test_rank_deficient_inputs_give_a_finite_fit_that_never_hurts():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 32, generator=g)  # 6 tokens: XᵀX has rank 6 of 32
    x[:, 5] = 0  # a dead channel
    weight = torch.randn(20, 32, generator=g, dtype=torch.float64)
    x, d = x.double(), pruning_residual(x, Method())
    solution = solve_lora(weight, statistics_of(x, d, weight), rank=16)
    assert torch.isfinite(solution.adapter.a).all() and torch.isfinite(solution.adapter.b).all()
    a, b = solution.adapter.a.double(), solution.adapter.b.double()
    after = (d @ weight.t() - x @ b.t() @ a.t()).norm()
    assert after <= (d @ weight.t()).norm()


class TwoLinears(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.up, self.down = nn.Linear(32, 64, dtype=dtype), nn.Linear(64, 24, dtype=dtype)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


def samples_for(dtype=torch.float32, count=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, 40, 32, generator=g).to(dtype) for _ in range(count)]


def layer_error(model, samples, name, adapter=None):
    """The named layer's relative output error when pruned (+ norm) and corrected by `adapter`, on its own inputs."""
    layer = dict(model.named_modules())[name]
    inputs = []
    handle = layer.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].reshape(-1, mod.in_features)))
    with torch.no_grad():
        for x in samples:
            model(x)
    handle.remove()
    x = torch.cat(inputs)
    pruned, scale = nm_prune_ref(x, 2, 4)
    dense = F.linear(x, layer.weight, layer.bias)
    out = F.linear(pruned * scale[:, None].to(x.dtype), layer.weight, layer.bias)
    if adapter is not None:
        out = out + adapter.correction(x)
    return ((out.double() - dense.double()).norm() / dense.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fitting_lowers_every_layers_calibration_error_and_reports_it(dtype):
    torch.manual_seed(0)
    model, samples = TwoLinears(dtype), samples_for(dtype)
    solutions = fit_lora(model, samples, rank=8)
    assert set(solutions) == {"up", "down"}
    for name, solution in solutions.items():
        before, after = layer_error(model, samples, name), layer_error(model, samples, name, solution.adapter)
        assert after < before
        tolerance = 1e-3 if dtype == torch.float32 else 2e-2  # bf16 forward vs the fp64 bookkeeping
        assert solution.errors[0] == pytest.approx(before, abs=tolerance)
        assert solution.errors[-1] == pytest.approx(after, abs=tolerance)


def test_a_small_memory_budget_streams_layers_in_groups_with_the_same_result():
    torch.manual_seed(0)
    model, samples = TwoLinears(), samples_for()
    lines = []
    grouped = fit_lora(model, samples, rank=4, memory_budget=1, progress=lines.append)
    together = fit_lora(model, samples, rank=4)
    assert len(lines) == 2 and "group 2/2" in lines[1]
    for name in together:
        torch.testing.assert_close(grouped[name].adapter.a, together[name].adapter.a)
        assert grouped[name].errors == together[name].errors


def test_fit_lora_rejects_unknown_layers_and_no_samples():
    model = TwoLinears()
    with pytest.raises(ValueError, match="not nn.Linear"):
        fit_lora(model, samples_for(), layers=["up", "sideways"])
    with pytest.raises(ValueError, match="at least one sample"):
        fit_lora(model, [])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_fit_lora_on_a_sample_holding_nan_or_inf_names_the_layer_not_a_linear_algebra_error(value):
    model = TwoLinears()
    samples = samples_for()
    samples[0][0, 3, 5] = value
    with pytest.raises(ValueError, match="inputs of 'up' over the samples hold NaN or Inf"):
        fit_lora(model, samples, rank=4)


# ---- storage with the policy -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_linears_policy():
    torch.manual_seed(0)
    model, samples = TwoLinears(), samples_for()
    return model, samples, calibrate(model, samples, target=1.0, lora_rank=6)


def test_calibrate_with_lora_stores_a_correction_for_every_sparse_layer(two_linears_policy):
    _, _, policy = two_linears_policy
    sparse = {name for name, layer in policy.layers.items() if layer.decision == "sparse"}
    assert sparse == {"up", "down"}  # target 1.0 admits both
    for name in sparse:
        layer = policy.layers[name]
        assert layer.lora_rank == 6 and layer.error_with_lora < layer.error
        assert policy.adapter_for(name).rank == 6


def test_adapters_round_trip_and_a_lower_rank_in_the_json_uses_a_prefix(two_linears_policy, tmp_path):
    _, _, policy = two_linears_policy
    path = tmp_path / "policy.json"
    policy.save(path)
    assert adapters_path(path).exists()
    loaded = Policy.load(path)
    assert loaded == policy
    for name, adapter in policy.adapters.items():
        assert torch.equal(loaded.adapters[name].a, adapter.a) and torch.equal(loaded.adapters[name].b, adapter.b)

    edited = path.read_text().replace('"lora_rank": 6', '"lora_rank": 2')
    path.write_text(edited)
    truncated = Policy.load(path).adapter_for("up")
    assert truncated.rank == 2 and torch.equal(truncated.a, policy.adapters["up"].a[:, :2])

    adapters_path(path).unlink()
    with pytest.raises(ValueError, match="field 'adapter_file': names 'policy.lora.safetensors', which cannot be read"):
        Policy.load(path)


def test_rank_zero_is_no_correction(two_linears_policy):
    model, samples, policy = two_linears_policy
    rank_zero = policy.with_lora(fit_lora(model, samples, rank=3), 0)
    assert not rank_zero.adapters and all(layer.lora_rank == 0 for layer in rank_zero.layers.values())
    a = lynx_compile.explain(model, samples[0], options={"policy": rank_zero})
    b = lynx_compile.explain(model, samples[0], options={"policy": policy.without_lora()})
    c = lynx_compile.explain(model, samples[0], options={"policy": policy})
    assert a.graphs[0].after == b.graphs[0].after and "lora" not in a.graphs[0].after
    assert "lora" in c.graphs[0].after


def test_a_mismatched_adapter_keeps_the_layer_dense_with_the_reason(two_linears_policy):
    model, samples, policy = two_linears_policy
    wrong = LoraAdapter(torch.zeros(24, 6), torch.zeros(6, 64))  # the shape of "down", given to "up"
    broken = policy._replace(dict(policy.layers), {**policy.adapters, "up": wrong})
    report = lynx_compile.explain(model, samples[0], options={"policy": broken})
    (up,) = [layer for layer in report.layers if layer.name == "up"]
    assert up.decision == "dense" and "LoRA adapter maps 64→24" in up.reason


# ---- in the compiled graph ---------------------------------------------------------------------------------------


def eager_with_corrections(model, inputs, policy):
    """Each sparse layer sees s·x̃ and adds (x·Bᵀ)·Aᵀ of its dense x: the method with LoRA, by hand."""
    modules = dict(model.named_modules())
    handles = []
    for name, layer in policy.layers.items():
        if layer.decision != "sparse":
            continue
        adapter = policy.adapter_for(name)

        def hook(module, args, out, adapter=adapter):
            rows = args[0].reshape(-1, module.in_features)
            if rows.shape[0] < 16:
                return None
            pruned, scale = nm_prune_ref(rows, 2, 4)
            y = F.linear(pruned * scale[:, None], module.weight, module.bias)
            if adapter is not None:
                y = y + rows @ adapter.b.t() @ adapter.a.t()
            return y.reshape(out.shape)

        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            return output_tensor(model(**inputs))
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.slow
def test_compiled_output_with_adapters_equals_the_eager_method(tmp_path):
    entry = ZOO["dit"]
    model, samples = entry.build(), [entry.make_inputs(seed) for seed in range(2)]
    policy = calibrate(model, samples, target=0.3, lora_rank=8)
    assert any(layer.lora_rank for layer in policy.layers.values())
    policy.save(tmp_path / "policy.json")
    torch.compiler.reset()
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        compiled = torch.compile(model, backend="lynx", fullgraph=True,
                                 options={"policy": str(tmp_path / "policy.json")})  # fmt: skip
        out = output_tensor(compiled(**samples[1]))
    corrected = [layer for layer in report.layers if "+ rank-8 LoRA" in layer.reason]
    assert {layer.name for layer in corrected} == {n for n, layer in policy.layers.items() if layer.lora_rank}

    expected = eager_with_corrections(model, samples[1], policy)
    without = eager_with_corrections(model, samples[1], policy.without_lora())
    assert ((out - expected).norm() / expected.norm()).item() < 1e-3
    assert ((without - expected).norm() / expected.norm()).item() > 1e-2  # the corrections really ran


def test_the_error_of_any_adapter_on_other_tokens_follows_from_their_statistics():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(12, 16, generator=g, dtype=torch.float64)
    x_fit, x_new = torch.randn(50, 16, generator=g), torch.randn(30, 16, generator=g)
    fit = statistics_of(x_fit.double(), pruning_residual(x_fit, Method()), weight)
    solution = solve_lora(weight, fit, rank=5)
    new = statistics_of(x_new.double(), pruning_residual(x_new, Method()), weight)
    x, d = x_new.double(), pruning_residual(x_new, Method())
    for rank in (0, 2, 5):
        adapter = solution.adapter_at(rank)
        measured = (d @ weight.t() - adapter.to(torch.float64).correction(x)).norm() / (x @ weight.t()).norm()
        assert adapter_error(new, weight, adapter) == pytest.approx(measured.item(), rel=1e-6)
    assert adapter_error(fit, weight, solution.adapter) == pytest.approx(solution.errors[-1], rel=1e-6)


def test_cross_validated_ridge_keeps_a_fit_from_few_tokens_from_hurting_fresh_inputs():
    """Random inputs carry no structure for the correction to learn: a fit from barely more tokens than channels
    overfits with a small fixed λ; the cross-validated λ must not make fresh tokens worse than no correction."""
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(48, 64, generator=g, dtype=torch.float64)
    x_fit, x_new = torch.randn(80, 64, generator=g), torch.randn(400, 64, generator=g)
    fit = statistics_of(x_fit.double(), pruning_residual(x_fit, Method()), weight)
    new = statistics_of(x_new.double(), pruning_residual(x_new, Method()), weight)
    uncorrected = adapter_error(new, weight, None)
    overfitted = adapter_error(new, weight, solve_lora(weight, fit, rank=16, ridge=1e-4).adapter)
    chosen = solve_lora(weight, fit, rank=16)
    assert overfitted > uncorrected  # the failure being guarded against does occur here
    assert chosen.ridge > 1e-4 and adapter_error(new, weight, chosen.adapter) <= uncorrected * 1.01
    assert chosen.rank in (0, 16)  # rank 0: cross-validation found no λ worth correcting with


@pytest.mark.parametrize("how", ["torch.compile", "in place", "block by block"])
def test_a_compiled_model_calibrates_and_fits_as_its_eager_self(how):
    """Compiled code runs past hooks added after it was compiled: calibration returned an empty policy for a model
    already compiled. It runs the model eagerly (and names layers without torch.compile's wrapper)."""
    torch.manual_seed(0)
    samples = samples_for(torch.float32)
    eager = TwoLinears(torch.float32)
    expected = calibrate(eager, samples, target=0.3, lora_rank=4, progress_bar=False)
    model = TwoLinears(torch.float32)
    model.load_state_dict(eager.state_dict())
    options = {"compiler": "eager"}
    if how == "torch.compile":
        model = torch.compile(model, backend="lynx", options=options)
    elif how == "in place":
        model.compile(backend="lynx", options=options)
    else:
        model.up.compile(backend="lynx", options=options)
        model.down.compile(backend="lynx", options=options)
    with torch.no_grad():
        model(samples[0])
    policy = calibrate(model, samples, target=0.3, lora_rank=4, progress_bar=False)
    assert {name: layer.decision for name, layer in policy.layers.items()} == \
        {name: layer.decision for name, layer in expected.layers.items()} and policy.layers  # fmt: skip
    assert policy.model_error == pytest.approx(expected.model_error, rel=1e-6)
    assert set(fit_lora(model, samples, rank=4, progress_bar=False)) == {"up", "down"}
