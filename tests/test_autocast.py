"""Under autocast a sparsified layer is the linear autocast would run: inputs cast to the autocast dtype before the
prune, computed and returned in that dtype, whether autocast is entered around the compiled model or inside it."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lynx_compile
from lynx_compile.method import Method, sparse_linear_ref
from lynx_compile.ops import sparse_linear_args
from lynx_compile.plan import SparseLinearPlan

BF16 = torch.bfloat16


class Mlp(nn.Module):
    """up → GELU → down, its output concatenated with a tensor of the caller's (type promotion shows downstream)."""

    def __init__(self, k=32, hidden=64):
        super().__init__()
        self.up, self.down = nn.Linear(k, hidden), nn.Linear(hidden, k)

    def forward(self, x, other):
        return torch.cat([self.down(F.gelu(self.up(x))), other], dim=-1)


def reference(model, x, other, dtype):
    """The method by hand on operands cast to `dtype`, as autocast's linear would see them."""

    def layer(module, h):
        return sparse_linear_ref(h.to(dtype), module.weight.to(dtype), module.bias.to(dtype), Method())

    return torch.cat([layer(model.down, F.gelu(layer(model.up, x))), other], dim=-1)


def compile_and_run(model, *args, **options):
    torch.compiler.reset()
    with lynx_compile.collect_reports() as report:
        out = torch.compile(model, backend="lynx", options=options)(*args)
    return out, report


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_autocast_around_the_model_is_followed(compiler):
    model, x, other = Mlp().eval(), torch.randn(2, 24, 32), torch.randn(2, 24, 8, dtype=BF16)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        eager = model(x, other)
        out, report = compile_and_run(model, x, other, execution="simulate", compiler=compiler)
    assert eager.dtype == out.dtype == BF16  # the cat with a bf16 tensor stays bf16
    assert [(layer.name, layer.decision, layer.dtype) for layer in report.layers] == [
        ("up", "sparse", "bfloat16"), ("down", "sparse", "bfloat16")]  # fmt: skip
    if compiler == "eager":
        torch.testing.assert_close(out, reference(model, x, other, BF16), rtol=0, atol=0)
    else:  # Inductor rounds fused intermediates its own way: compare with the same model cast to bf16 by hand
        with torch.no_grad():
            by_hand, _ = compile_and_run(copy.deepcopy(model).to(BF16), x.to(BF16), other, execution="simulate")
        torch.testing.assert_close(out, by_hand, rtol=2**-7, atol=2**-7)


def test_autocast_regions_inside_the_model_are_followed():
    class Regions(nn.Module):
        def __init__(self):
            super().__init__()
            self.low, self.full = nn.Linear(32, 32), nn.Linear(32, 32)

        def forward(self, x):
            with torch.autocast("cpu", dtype=torch.float16):
                h = self.low(x)
                with torch.autocast("cpu", enabled=False):
                    return self.full(h.float())

    model, x = Regions().eval(), torch.randn(48, 32)
    with torch.no_grad():
        out, report = compile_and_run(model, x, compiler="eager")
        eager_dtype = model(x).dtype
    assert [(layer.name, layer.decision, layer.dtype) for layer in report.layers] == [
        ("low", "sparse", "float16"), ("full", "sparse", "float32")]  # fmt: skip
    f16 = torch.float16
    half = sparse_linear_ref(x.to(f16), model.low.weight.to(f16), model.low.bias.to(f16), Method())
    expected = sparse_linear_ref(half.float(), model.full.weight, model.full.bias, Method())
    assert out.dtype == eager_dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_a_producer_in_another_dtype_is_not_folded_under_autocast():
    """GELU of an fp32 tensor feeding an autocast linear: autocast casts GELU's output, so the op must see x itself
    (folded, it would cast GELU's input instead and prune a different x)."""

    class GeluOfInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(32, 32)

        def forward(self, x):
            return self.proj(F.gelu(x))

    model, x = GeluOfInput().eval(), torch.randn(48, 32) * 3
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        out, report = compile_and_run(model, x, compiler="eager")
    (layer,) = report.layers
    assert layer.decision == "sparse" and "folded" not in layer.reason
    expected = sparse_linear_ref(F.gelu(x).to(BF16), model.proj.weight.to(BF16), model.proj.bias.to(BF16), Method())
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_the_op_casts_like_linear_under_autocast():
    x, weight = torch.randn(32, 16), torch.randn(24, 16)
    args = sparse_linear_args([x], weight, None, None, SparseLinearPlan("simulate"))
    with torch.autocast("cpu", dtype=BF16):
        out = torch.ops.lynx.sparse_linear.default(*args)
        linear = F.linear(x, weight)
    assert out.dtype == linear.dtype == BF16
    torch.testing.assert_close(out, sparse_linear_ref(x.to(BF16), weight.to(BF16), None, Method()), rtol=0, atol=0)
    assert torch.ops.lynx.sparse_linear.default(*args).dtype == torch.float32  # outside autocast: as given
