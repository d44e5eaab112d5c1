"""The family sweep on the GPU (`pytest -m gpu`): every transformer class of tests/test_family.py, in bf16 on CUDA,
compiled by lynx with Inductor and every layer the method can take on sparse tensor cores (the speed rule's
threshold near zero), must run, put layers on the sparse kernels, and compute what the simulate path computes.

What "computes the same" can mean here: these tiny random models (K = 64, a few dozen tokens) amplify a rounding
into flipped 2:4 choices at near-ties in later layers, and each flip at K = 64 moves a row by a lot (on an H200 the
dense FLUX.2 and LongCat audio models under Inductor differ from eager by 20-25%, benchmarks/RESULTS.md, session 29).
So each model is checked twice:
- one layer at a time (the first, a middle and the last sparse layer; the rest dense; `isolated`): the kernels against
  the simulate path on the same input, where only that layer's roundings differ: within half of what pruning the
  layer moves the output, plus 1% (measured: at most 0.8%; a wrong operand, layout or scale moves it by O(1));
- the whole model: within half of what pruning moves it, or within twice what rounding alone moves the simulate
  path (Inductor's roundings against eager's), whichever is larger.
"""

import pytest
import torch
from test_family import FAMILY, first_output
from test_zoo import relative_error

import lynx_compile

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

EVERY_LAYER = 1e-3  # min_speedup: every layer the method can take goes sparse, whatever the speed rule measures


def to_cuda_bf16(value):
    """Inputs as the model's user passes them on the GPU: floating tensors in bf16, the rest as they are."""
    if isinstance(value, torch.Tensor):
        return value.cuda().to(torch.bfloat16) if value.is_floating_point() else value.cuda()
    if isinstance(value, (list, tuple)):
        return type(value)(to_cuda_bf16(item) for item in value)
    if isinstance(value, dict):
        return {key: to_cuda_bf16(item) for key, item in value.items()}
    return value


def compiled_output(model, inputs, **options):
    """The model's sample compiled by lynx with `options`, and the compile's report."""
    torch.compiler.reset()
    with lynx_compile.collect_reports() as report:
        out = first_output(torch.compile(model, backend="lynx", options=options)(**inputs)).float()
    return out, report


def inductor_fails_without_lynx(model, inputs) -> bool:
    torch.compiler.reset()
    try:
        torch.compile(model)(**inputs)
    except Exception:  # noqa: BLE001 - any failure of torch's own compile
        return True
    return False


def isolated(model, inputs, layer):
    """The model's sample with `layer` alone sparse, on the sparse kernels and simulated (compiled without Inductor:
    seconds a model). Where one graph serves several instances of a module (a graph break inside it) and lynx
    refuses to treat its layers differently in them (`RegionError`), every layer of the model with the same leaf
    name goes sparse instead."""
    def sparse_and_simulated(include):
        options = dict(min_speedup=EVERY_LAYER, include=include, compiler="eager")
        return (compiled_output(model, inputs, execution="sparse", **options)[0],
                compiled_output(model, inputs, execution="simulate", **options)[0])  # fmt: skip

    try:
        return sparse_and_simulated([layer])
    except lynx_compile.RegionError:
        return sparse_and_simulated(["*." + layer.rsplit(".", 1)[-1]])


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_each_transformer_runs_its_sparse_layers_on_sparse_cores_as_simulated(name):
    build, make_inputs = FAMILY[name]
    model = build().cuda().to(torch.bfloat16).eval()
    inputs = to_cuda_bf16(make_inputs(0))
    with torch.no_grad():
        try:
            dense = first_output(model(**inputs)).float()
        except Exception as error:  # noqa: BLE001 - the model itself, without lynx
            pytest.skip(f"the model does not run in bf16 on CUDA without lynx: {error!r}"[:300])
        try:
            sparse, report = compiled_output(model, inputs, execution="sparse", min_speedup=EVERY_LAYER)
        except Exception:
            if inductor_fails_without_lynx(model, inputs):
                pytest.skip("Inductor fails to compile this model without lynx too")
            raise
        names = sorted({layer.name for layer in report.sparse_layers})
        if not names:
            pytest.skip(f"no layer whose shapes the method can prune: {report}"[:300])
        assert all("sparse tensor cores" in layer.reason for layer in report.sparse_layers), report
        simulated, simulated_report = compiled_output(model, inputs, execution="simulate", include=names)
        assert sorted({layer.name for layer in simulated_report.sparse_layers}) == names
        simulated_eagerly, _ = compiled_output(model, inputs, execution="simulate", include=names, compiler="eager")

        for layer in sorted({names[0], names[len(names) // 2], names[-1]}):
            alone, alone_simulated = isolated(model, inputs, layer)
            moved, pruned = relative_error(alone, alone_simulated), relative_error(alone_simulated, dense)
            assert moved < 0.5 * pruned + 0.01, (layer, moved, pruned)

    assert torch.isfinite(sparse).all() or not torch.isfinite(dense).all()
    moved, pruned = relative_error(sparse, simulated), relative_error(simulated, dense)
    rounded = relative_error(simulated, simulated_eagerly)
    print(f"{name}: {len(names)} layers sparse; sparse vs simulate {moved:.4f}, simulate vs dense {pruned:.4f}, "
          f"simulate under Inductor vs eagerly {rounded:.4f}")  # shown with -s
    assert moved < max(0.5 * pruned, 2 * rounded), (moved, pruned, rounded)
