"""torchao float8 layers compiled with lynx: found, decided with reasons, run with lynx's FP8 numerics (the simulate
path here, on the CPU), the quantized weight read in place."""

import pytest
import torch
import torch.nn.functional as F

import lynx_compile
from lynx_compile.float8 import dense_float8_linear, float8_weight_reason, quantize_weight
from lynx_compile.folds import IDENTITY
from lynx_compile.fp8 import float8_linear_ref
from lynx_compile.method import Method

torchao = pytest.importorskip("torchao")
float8_tensor = pytest.importorskip("torchao.quantization.quantize_.workflows.float8.float8_tensor")
from torchao.float8.inference import Float8MMConfig  # noqa: E402
from torchao.quantization import PerRow, PerTensor  # noqa: E402
from test_regional import diffusers_stack  # noqa: E402


def float8(linear: torch.nn.Linear, granularity=None, dynamic_activation: bool = True) -> torch.nn.Linear:
    """The linear's weight as torchao's `quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity))`
    leaves it (that entry point refuses CPUs; this is the tensor it builds)."""
    granularity = granularity or PerRow()
    activation = float8_tensor.QuantizeTensorToFloat8Kwargs(granularity=granularity) if dynamic_activation else None
    weight = float8_tensor.Float8Tensor.from_hp(linear.weight.detach(), granularity=granularity,
                                                mm_config=Float8MMConfig(use_fast_accum=True),
                                                act_quant_kwargs=activation)  # fmt: skip
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    return linear


class Block(torch.nn.Module):
    def __init__(self, dim: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(dim, hidden), torch.nn.Linear(hidden, dim)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


def _cpu_scaled_mm_takes_rowwise_scales() -> bool:
    """torch 2.13's CPU `_scaled_mm` takes a scale per row and per column; 2.11's asserts per-tensor scales, so
    torchao's rowwise float8 linear itself fails on the CPU there, eagerly as compiled. A probe, not a version."""
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
    except RuntimeError:
        return False
    return True


needs_rowwise_fp8_on_cpu = pytest.mark.skipif(not _cpu_scaled_mm_takes_rowwise_scales(),
                                              reason="this torch's CPU _scaled_mm takes per-tensor scales only: "
                                                     "torchao's rowwise float8 fails on the CPU, eager and compiled")


def quantized_block(**kwargs) -> Block:
    torch.manual_seed(0)
    block = Block().to(torch.bfloat16)
    float8(block.up, **kwargs), float8(block.down, **kwargs)
    return block


def inner(linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    return linear.weight.qdata, linear.weight.scale.reshape(-1).float().expand(linear.out_features)


@pytest.mark.parametrize("granularity", [PerRow(), PerTensor()], ids=["rowwise", "tensorwise"])
def test_simulated_float8_block_runs_lynxs_fp8_numerics(granularity):
    block = quantized_block(granularity=granularity)
    x = torch.randn(2, 40, 128, dtype=torch.bfloat16)
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        out = torch.compile(block, backend="lynx", options={"execution": "simulate"})(x)
    method = Method()
    hidden = float8_linear_ref(x, *inner(block.up), block.up.bias, method)
    expected = float8_linear_ref(F.gelu(hidden), *inner(block.down), block.down.bias, method)
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)  # bf16 roundings apart
    assert [layer.decision for layer in report.layers] == ["sparse", "sparse"]
    assert all("simulated on rowwise FP8" in layer.reason for layer in report.layers)


def test_the_float8_weight_is_read_in_place_not_copied():
    block = quantized_block()
    with torch.no_grad():
        compiled = torch.compile(block, backend="lynx", options={"execution": "simulate"})
        compiled(torch.randn(64, 128, dtype=torch.bfloat16))
    buffers = dict(compiled.named_buffers())
    assert not any(name.startswith("lynx") for name in buffers)  # nothing of lynx's own stored beside the model
    assert type(block.up.weight).__name__ == "Float8Tensor"


def test_weight_only_float8_stays_dense_with_its_reason():
    block = quantized_block(dynamic_activation=False)
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        torch.compile(block, backend="lynx", options={"execution": "simulate"})(torch.randn(64, 128,
                                                                                         dtype=torch.bfloat16))
    assert [layer.decision for layer in report.layers] == ["dense", "dense"]
    assert all("weight-only" in layer.reason for layer in report.layers)


def test_float8_layers_compile_with_gradients_enabled():
    """Parameters as `from_pretrained` leaves them (the bias requires grad) and grad mode on: AOT traces the
    backward, which passes straight through the pruning and the quantization."""
    block = quantized_block()
    x = torch.randn(64, 128, dtype=torch.bfloat16, requires_grad=True)
    out = torch.compile(block, backend="lynx", options={"execution": "simulate"})(x)
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and block.down.bias.grad is not None


@needs_rowwise_fp8_on_cpu
def test_below_min_tokens_a_float8_layer_runs_rowwise_fp8_dense():
    block = quantized_block()
    x = torch.randn(4, 128, dtype=torch.bfloat16)  # 4 tokens: below min_tokens
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        out = torch.compile(block, backend="lynx", options={"execution": "simulate"})(x)
    assert all("min_tokens" in layer.reason for layer in report.layers)
    with torch.no_grad():
        torch.testing.assert_close(out.float(), block(x).float(), rtol=2e-2, atol=2e-2)  # torchao's own result


def test_dense_float8_linear_is_close_to_the_high_precision_product():
    torch.manual_seed(0)
    x, weight = torch.randn(33, 256, dtype=torch.bfloat16), torch.randn(48, 256, dtype=torch.bfloat16) / 16
    bias = torch.randn(48, dtype=torch.bfloat16)
    float8_weight = quantize_weight(weight)
    out = dense_float8_linear([x], IDENTITY, float8_weight, bias)
    exact = F.linear(x.float(), weight.float(), bias.float())
    rel = (out.float() - exact).norm() / exact.norm()
    assert rel < 0.05  # FP8 is close to the high-precision product


def test_reasons_for_float8_weights_lynx_cannot_take():
    weight = torch.randn(64, 128, dtype=torch.bfloat16)
    e5m2 = float8_tensor.Float8Tensor.from_hp(weight, float8_dtype=torch.float8_e5m2, granularity=PerRow(),
                                              act_quant_kwargs=float8_tensor.QuantizeTensorToFloat8Kwargs(
                                                  float8_dtype=torch.float8_e5m2, granularity=PerRow()))  # fmt: skip
    assert "e4m3" in float8_weight_reason(e5m2)
    rowwise = float8_tensor.Float8Tensor.from_hp(weight, granularity=PerRow(),
                                                 act_quant_kwargs=float8_tensor.QuantizeTensorToFloat8Kwargs())
    assert float8_weight_reason(rowwise) is None
    for bound in ({"hp_value_ub": 0.5}, {"hp_value_lb": 100.0}):  # torchao's activation_value_ub / _lb
        bounded = float8_tensor.Float8Tensor.from_hp(weight, granularity=PerRow(),
                                                     act_quant_kwargs=float8_tensor.QuantizeTensorToFloat8Kwargs(
                                                         granularity=PerRow(), **bound))  # fmt: skip
        assert f"bounded ({', '.join(f'{k}={v}' for k, v in bound.items())})" in float8_weight_reason(bounded)


@needs_rowwise_fp8_on_cpu
def test_under_autocast_calibrate_and_compiling_leave_float8_layers_to_torchao():
    block = quantized_block()
    samples = [torch.randn(2, 32, 128, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(i))
               for i in range(2)]  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        policy = lynx_compile.calibrate(block, samples, target=1.0, progress_bar=False)
        with torch.no_grad(), lynx_compile.collect_reports() as report:
            torch.compile(block, backend="lynx", options={"execution": "simulate"})(samples[0])
    compiled = {layer.name: layer.reason for layer in report.layers}
    for name in ("up", "down"):
        assert policy.layers[name].reason == compiled[name] == "float8 weight under autocast: left to torchao"


@needs_rowwise_fp8_on_cpu
def test_a_float8_layer_with_bounded_activation_scales_runs_torchaos_own_numerics():
    bounded = {"act_quant_kwargs": float8_tensor.QuantizeTensorToFloat8Kwargs(granularity=PerRow(), hp_value_ub=0.5)}
    torch.manual_seed(0)
    block = Block().to(torch.bfloat16)
    for linear in (block.up, block.down):
        weight = float8_tensor.Float8Tensor.from_hp(linear.weight.detach(), granularity=PerRow(),
                                                    mm_config=Float8MMConfig(use_fast_accum=True), **bounded)
        linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    x = torch.randn(64, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = block(x)  # torchao's, the activation clamped into its bound before its scale
        with lynx_compile.collect_reports() as report:
            out = torch.compile(block, backend="lynx", options={"execution": "simulate", "compiler": "eager"})(x)
    assert all(layer.decision == "dense" and "scale bounded (hp_value_ub=0.5)" in layer.reason
               for layer in report.layers) and len(report.layers) == 2  # fmt: skip
    torch.testing.assert_close(out, expected)


@needs_rowwise_fp8_on_cpu
def test_calibrate_measures_no_layer_compiling_keeps_dense_for_its_weights_kind():
    """e5m2, weight-only float8 and torchao's int8 weights stay dense when compiled: `calibrate` records them dense
    with the words compiling gives (spending none of its error budget on them, and running none of their pruning,
    which raised inside torchao for int8), and `fit_lora` fits none (refusing them by name)."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    class Four(torch.nn.Module):
        def __init__(self, dim: int = 128) -> None:
            super().__init__()
            self.a, self.b, self.c, self.d = (torch.nn.Linear(dim, dim) for _ in range(4))

        def forward(self, x):
            for layer in (self.a, self.b, self.c, self.d):
                x = x + layer(F.gelu(x))
            return x

    torch.manual_seed(0)
    model = Four().to(torch.bfloat16)
    float8(model.a)
    model.b.weight = torch.nn.Parameter(float8_tensor.Float8Tensor.from_hp(
        model.b.weight.detach(), float8_dtype=torch.float8_e5m2, granularity=PerRow(), mm_config=Float8MMConfig(),
        act_quant_kwargs=float8_tensor.QuantizeTensorToFloat8Kwargs(float8_dtype=torch.float8_e5m2)),
        requires_grad=False)  # fmt: skip
    float8(model.c, dynamic_activation=False)
    quantize_(model.d, Int8WeightOnlyConfig())
    samples = [torch.randn(2, 32, 128, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(i))
               for i in range(2)]  # fmt: skip
    policy = lynx_compile.calibrate(model, samples, target=1.0, progress_bar=False)
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        torch.compile(model, backend="lynx", options={"execution": "simulate"})(samples[0])
    compiled = {layer.name: layer for layer in report.layers}
    assert policy.layers["a"].decision == "sparse" == compiled["a"].decision
    for name in "bcd":
        assert compiled[name].decision == "dense" == policy.layers[name].decision, name
        assert policy.layers[name].reason == compiled[name].reason and policy.layers[name].error is None, name
    assert "Int8Tensor operand" in policy.layers["d"].reason
    assert set(lynx_compile.fit_lora(model, samples, rank=2, progress_bar=False)) == set()
    with pytest.raises(ValueError, match=r"\(Float8Tensor, Int8Tensor: torchao's quantized .* no LoRA.*\['a', 'd'\]"):
        lynx_compile.fit_lora(model, samples, rank=2, layers=["a", "d"], progress_bar=False)


@needs_rowwise_fp8_on_cpu
def test_on_a_cpu_sparse_execution_keeps_float8_layers_dense_with_the_fp8_paths_reasons():
    """execution="sparse" off an sm_90 GPU: float8 layers ask the float8 paths (and say why none runs), plain layers
    beside them ask the bf16 paths."""
    block = quantized_block()
    block.down = torch.nn.Linear(256, 128).to(torch.bfloat16)  # a plain linear beside a float8 one
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        torch.compile(block, backend="lynx", options={"execution": "sparse"})(torch.randn(64, 128,
                                                                                       dtype=torch.bfloat16))
    reasons = {layer.name: layer.reason for layer in report.layers}
    assert "no FP8 sparse-tensor-core kernel for cpu" in reasons["up"]
    assert "FP8" not in reasons["down"] and "cpu" in reasons["down"]
    torch._dynamo.reset()
    with torch.no_grad(), lynx_compile.collect_reports() as report:  # the paths allowed are none of float8's
        torch.compile(block, backend="lynx", options={"execution": "sparse", "sparse_paths": ["cusparselt"]})(
            torch.randn(64, 128, dtype=torch.bfloat16))
    reasons = {layer.name: layer.reason for layer in report.layers}
    assert reasons["up"].startswith("sparse_paths=['cusparselt'] allows no sparse path for torchao float8 layers (")
    assert "cutlass_float8" in reasons["up"] and "sparse_paths" not in reasons["down"]


@needs_rowwise_fp8_on_cpu
@pytest.mark.parametrize("name", ["flux", "wan"])
def test_a_tiny_diffusers_model_quantized_with_torchao_float8(name):
    """Every block linear of a diffusers DiT as torchao's float8 leaves it is found, and simulated with lynx's FP8
    numerics (or kept dense for its token count); FP8 on top of 2:4 adds FP8's own error to 2:4's, as independent
    errors add (in quadrature), not more."""
    from zoo import ZOO, output_tensor

    entry = ZOO[name]
    model, inputs = entry.build().to(torch.bfloat16), entry.make_inputs(0)
    inputs = {key: value.to(torch.bfloat16) if torch.is_tensor(value) and value.is_floating_point() else value
              for key, value in inputs.items()}  # fmt: skip
    simulate = {"execution": "simulate"}
    with torch.no_grad():
        dense = output_tensor(model(**inputs))
        sparse = output_tensor(torch.compile(model, backend="lynx", options=simulate)(**inputs))
    torch._dynamo.reset()
    block_linears = [module for path, module in model.named_modules() if isinstance(module, torch.nn.Linear)
                     and path.startswith(entry.block_prefixes)]  # fmt: skip
    for linear in block_linears:
        float8(linear)
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        fp8_dense = output_tensor(model(**inputs))  # torchao's own
        fp8_sparse = output_tensor(torch.compile(model, backend="lynx", options=simulate)(**inputs))
    names = {module: path for path, module in model.named_modules()}
    decided = {layer.name: layer for layer in report.layers}
    for linear in block_linears:  # per-token layers on the FP8 path; per-sample ones (adaLN: M = batch) dense
        layer = decided[names[linear]]
        expected = "rowwise FP8" if layer.decision == "sparse" else "min_tokens"
        assert expected in layer.reason, (layer.name, layer.reason)
    assert sum(layer.decision == "sparse" for layer in decided.values()) > len(block_linears) // 2

    def error(out: torch.Tensor) -> float:
        return ((out.float() - dense.float()).norm() / dense.float().norm()).item()

    assert torch.isfinite(fp8_sparse).all() and 0 < error(fp8_dense) < 0.1
    assert error(fp8_sparse) < 1.1 * (error(sparse) ** 2 + error(fp8_dense) ** 2) ** 0.5


def test_the_float8_lowering_replaces_the_ops_by_their_paths_body(monkeypatch):
    """The pattern that lowers `lynx::float8_sparse_linear` into its path's body (on the GPU, the CUTLASS FP8 path's
    kernel ops), exercised here on the simulate path made to opt in: both layers (one with a bias, one without)
    lowered, and the result that of the ops left as they are, but for bf16 roundings of the fused graph."""
    import lynx_compile.passes.lower_sparse_linears as lowering
    from lynx_compile.paths import get_path

    passes = []

    class Recording(lowering.LowerSparseLinears):
        def __init__(self, config):
            super().__init__(config)
            passes.append(self)

    block = quantized_block()
    block.down.bias = None
    layers = (block.up, block.down)  # compiled apart: a mask flip in one must not move the other
    inputs = (torch.randn(2, 40, 128, dtype=torch.bfloat16), torch.randn(2, 40, 256, dtype=torch.bfloat16))
    monkeypatch.setattr(lowering, "LowerSparseLinears", Recording)
    outs = []
    for lowers in (False, True):
        monkeypatch.setattr(type(get_path("simulate_float8")), "lowers_float8", lowers)
        torch._dynamo.reset()
        with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):
            outs.append([torch.compile(layer, backend="lynx", options={"execution": "simulate"})(x_in)
                         for layer, x_in in zip(layers, inputs)])  # fmt: skip
    assert [recorded.lowered for recorded in passes] == [0, 0, 1, 1]
    for lowered, as_op in zip(outs[1], outs[0]):
        error = ((lowered.float() - as_op.float()).norm() / as_op.float().norm()).item()
        assert error < 1e-2, error


@needs_rowwise_fp8_on_cpu
def test_calibrating_with_lora_skips_float8_layers_and_fit_lora_refuses_them():
    """lynx runs no correction on a float8 layer: `calibrate(..., lora_rank=)` fits none for them (it raised from
    inside torchao), `fit_lora` names them in its error."""
    block = quantized_block()
    samples = [torch.randn(2, 32, 128, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(i))
               for i in range(2)]  # fmt: skip
    policy = lynx_compile.calibrate(block, samples, target=1.0, lora_rank=4, progress_bar=False)
    assert set(policy.layers) == {"up", "down"} and not policy.adapters
    with pytest.raises(ValueError, match=r"tensor subclass \(Float8Tensor: torchao's quantized .*\) take no LoRA"):
        lynx_compile.fit_lora(block, samples, rank=4, layers=["up"], progress_bar=False)
    assert lynx_compile.fit_lora(block, samples, rank=4, progress_bar=False) == {}


@pytest.mark.parametrize("compiled_as", ["lynx_regional", "diffusers_regional"])
def test_instances_of_a_block_quantized_unalike_are_each_reported_by_the_graph_that_runs_it(compiled_as):
    """One block's linears torchao float8, its sibling's not: Dynamo compiles a graph for each (it guards on the
    weights' kinds), and each instance's rows come from its own graph, not from the first one compiled."""
    torch.manual_seed(0)
    model = diffusers_stack(Block, count=2).to(torch.bfloat16)
    float8(model.blocks[0].up), float8(model.blocks[0].down)
    simulate = {"execution": "simulate"}
    if compiled_as == "lynx_regional":
        lynx_compile.compile_repeated_blocks(model, options=simulate)
    else:
        model.compile_repeated_blocks(backend="lynx", options=simulate)
    x = torch.randn(2, 32, 128, dtype=torch.bfloat16)
    with torch.no_grad(), lynx_compile.collect_reports(model) as report:
        model(x)
    rows = {layer.name: layer for layer in report.layers}
    assert {"blocks.0.up", "blocks.1.up", "blocks.0.down", "blocks.1.down"} <= set(rows)
    for name in ("up", "down"):
        assert "rowwise FP8" in rows[f"blocks.0.{name}"].reason and "FP8" not in rows[f"blocks.1.{name}"].reason
        assert rows[f"blocks.0.{name}"].graph != rows[f"blocks.1.{name}"].graph
