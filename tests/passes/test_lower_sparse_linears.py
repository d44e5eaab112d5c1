"""The Inductor post-grad lowering: what reaches generated code, and the cache identity of the pass."""

import dataclasses

import torch
import torch.nn as nn
from torch._inductor.utils import run_and_get_code

import lynx_compile  # noqa: F401
from lynx_compile.config import LynxConfig
from lynx_compile.passes.lower_sparse_linears import LowerSparseLinears


def mlp():
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)).eval()


def generated_code(model, *inputs):
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(model, backend="lynx"), *inputs)
    return out, "\n".join(code)


def test_static_token_count_is_lowered_to_prune_then_mm():
    out, code = generated_code(mlp(), torch.randn(2, 12, 32))
    calls = [line for line in code.splitlines() if "= torch.ops.lynx" in line]
    assert len(calls) == 2 and all("torch.ops.lynx.nm_prune.default(" in line for line in calls)
    assert "torch.ops.lynx.sparse_linear" not in code.replace("Original ATen: [lynx.sparse_linear", "")
    assert out.shape == (2, 12, 32)


def test_a_symbolic_token_count_is_guarded_at_min_tokens_and_lowered():
    """M dynamic: decided under a guard M ≥ min_tokens, so the ops are lowered (epilogue fused); a call below the
    threshold recompiles and runs dense."""
    model = mlp()
    x = torch.randn(2, 20, 32)
    torch._dynamo.mark_dynamic(x, 1)
    compiled = torch.compile(model, backend="lynx")
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):  # a graph cached unguarded stays opaque
        out, code = run_and_get_code(compiled, x)
        assert "torch.ops.lynx.nm_prune.default(" in "\n".join(code)
        assert "torch.ops.lynx.sparse_linear.default(" not in "\n".join(code)
        assert not torch.allclose(out, model(x), rtol=1e-2, atol=1e-3)  # 40 tokens: pruned
        with torch.compiler.set_stance("fail_on_recompile"):  # another count above the threshold: same graph
            compiled(torch.randn(2, 30, 32))
        few = torch.randn(2, 4, 32)  # 8 tokens < min_tokens: the guard sends it to a graph of its own, dense
        torch.testing.assert_close(compiled(few), model(few), rtol=1e-5, atol=1e-5)


def test_a_plan_is_settled_only_where_its_run_time_check_provably_passes():
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from lynx_compile.folds import IDENTITY
    from lynx_compile.method import Method
    from lynx_compile.plan import SparseLinearPlan

    env = ShapeEnv()
    rows = env.create_symintnode(env.create_symbol(40, ConstantSource("rows")), hint=40)
    plan, padded = (SparseLinearPlan("simulate", Method(min_tokens=16), IDENTITY, multiple) for multiple in (1, 16))
    assert plan.settled(48) and not plan.settled(8) and not padded.settled(40)
    assert not plan.settled(rows)  # unknown until something guarded it
    assert bool(rows >= 16)  # what decide_linears does
    assert plan.settled(rows) and not padded.settled(rows)  # M % 16 is still unknown: that op stays opaque


def test_uuid_follows_config_and_is_stable():
    base = LynxConfig()
    assert LowerSparseLinears(base).uuid() == LowerSparseLinears(LynxConfig()).uuid()
    for changed in (dataclasses.replace(base, n=1), dataclasses.replace(base, norm_compensation=False)):
        assert LowerSparseLinears(changed).uuid() != LowerSparseLinears(base).uuid()


def test_the_pass_counts_what_it_lowered(monkeypatch):
    import lynx_compile.passes.lower_sparse_linears as lowering

    passes = []

    class Recording(LowerSparseLinears):
        def __init__(self, config):
            super().__init__(config)
            passes.append(self)

    monkeypatch.setattr(lowering, "LowerSparseLinears", Recording)
    model = mlp()
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):  # a cache hit skips the pass
        with lynx_compile.collect_reports() as report:
            torch.compile(model, backend="lynx")(torch.randn(2, 12, 32))
        assert [layer.opaque for layer in report.layers] == [False, False] and "opaque" not in report.summary()
        assert passes[-1].lowered == 2

        x = torch.randn(2, 20, 32)
        torch._dynamo.mark_dynamic(x, 1)
        with lynx_compile.collect_reports() as report:
            torch.compile(model, backend="lynx")(x)
        assert [layer.opaque for layer in report.layers] == [False, False]  # guarded ≥ min_tokens, then lowered
        assert "guarded ≥ 16" in report.layers[0].reason and passes[-1].lowered == 2
