"""explain(): it reports every time, it leaves the caller's compiled models alone, and it tells calls from modules."""

import sys
import weakref

import pytest
import torch

import lynx_compile
from torch._dynamo.eval_frame import _debug_get_cache_entry_list


class Mlp(torch.nn.Module):
    def __init__(self, width: int = 64, graph_break: bool = False) -> None:
        super().__init__()
        self.up, self.down, self.graph_break = torch.nn.Linear(width, width), torch.nn.Linear(width, width), graph_break

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.up(x))
        if self.graph_break:
            torch._dynamo.graph_break()
        return self.down(h)


class SharedProjection(torch.nn.Module):
    """One linear applied to two inputs (as a shared projection or a CFG half would be), then another."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.proj, self.out = torch.nn.Linear(width, width), torch.nn.Linear(width, width)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.out(self.proj(a) * self.proj(b))


@pytest.fixture(params=["isolate_recompiles", "older_torch"])
def explains_apart(request, monkeypatch):
    """explain's code kept apart from the caller's on shared frames: by torch.compile's `isolate_recompiles`, or,
    as with a torch that lacks it (2.11), by resetting a frame once explain's code has taken half its recompile
    limit."""
    explain_module = sys.modules["lynx_compile.explain"]
    if request.param == "isolate_recompiles" and not explain_module.ISOLATED:
        pytest.skip("this torch has no isolate_recompiles")
    if request.param == "older_torch":
        monkeypatch.setattr(explain_module, "ISOLATED", {})
        monkeypatch.setattr(sys.modules["lynx_compile.regional"], "ISOLATED", {})
        monkeypatch.setattr(explain_module, "_entries_taken", weakref.WeakKeyDictionary())  # no other test's count


def counting_backend(graphs: list):
    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend


def test_explain_does_not_make_a_compiled_model_recompile():
    model, x = Mlp().eval(), torch.randn(32, 64)
    graphs: list = []
    compiled = torch.compile(model, backend=counting_backend(graphs))
    with torch.no_grad():
        expected = compiled(x)
    assert len(graphs) == 1

    first = lynx_compile.explain(model, x)
    second = lynx_compile.explain(model, x)  # never served the first one's graph: it reports again

    assert [layer.name for layer in first.layers] == ["up", "down"]
    assert [(layer.name, layer.decision, layer.reason) for layer in second.layers] == [
        (layer.name, layer.decision, layer.reason) for layer in first.layers
    ]
    with torch.no_grad(), torch.compiler.set_stance("fail_on_recompile"):
        torch.testing.assert_close(compiled(x), expected)
    assert len(graphs) == 1  # the caller's compiled code was neither dropped nor recompiled


def test_explain_of_a_graph_breaking_model_leaves_no_compiled_code_behind(explains_apart):
    model, x = Mlp(graph_break=True).eval(), torch.randn(32, 64)
    report = lynx_compile.explain(model, x)
    assert len(report.graphs) == 2 and [layer.name for layer in report.layers] == ["up", "down"]
    for code in (Mlp.forward.__code__, torch.nn.Module._call_impl.__code__):
        assert _debug_get_cache_entry_list(code) == []

    graphs: list = []
    compiled = torch.compile(model, backend=counting_backend(graphs))
    with torch.no_grad():
        compiled(x)
    compiled_graphs = len(graphs)
    lynx_compile.explain(model, x)
    with torch.no_grad(), torch.compiler.set_stance("fail_on_recompile"):
        compiled(x)
    assert len(graphs) == compiled_graphs


def test_repeated_calls_of_a_module_are_marked_and_counted():
    model = SharedProjection().eval()
    report = lynx_compile.explain(model, torch.randn(32, 64), torch.randn(32, 64), options={"exclude": ["out"]})
    assert [(layer.name, layer.call) for layer in report.layers] == [("proj", 1), ("proj", 2), ("out", 1)]
    table = str(report).splitlines()
    assert table[2].startswith("proj (call 1)") and table[3].startswith("proj (call 2)")
    assert table[4].startswith("out ") and "call" not in table[4]
    assert report.modules == ["proj", "out"]
    assert report.summary().startswith("1/2 linear modules sparsified (2/3 calls), ")
    assert '"call": 2' in report.to_json()


def test_summary_without_repeated_calls_counts_modules_only():
    report = lynx_compile.explain(Mlp().eval(), torch.randn(32, 64), options={"exclude": ["down"]})
    assert report.summary().startswith("1/2 linear modules sparsified, ")


def test_nested_report_collections_each_get_what_ran_inside_them():
    """explain opens a collection of its own inside the caller's: the caller's must keep collecting after it (a
    Report compares equal to another empty one, and the inner exit used to remove the outer)."""
    import torch.nn as nn

    first, second = nn.Sequential(nn.Linear(16, 16)), nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16))
    x = torch.randn(24, 16)
    with lynx_compile.collect_reports() as outer:
        inner = lynx_compile.explain(first, x)
        with torch.no_grad():
            torch.compile(second, backend="lynx", options={"compiler": "eager"})(x)
    assert len(inner.layers) == 1 and len(outer.layers) == 1 + 2
    with torch.no_grad(), lynx_compile.collect_reports() as later:
        torch._dynamo.reset()
        torch.compile(first, backend="lynx", options={"compiler": "eager"})(x)
    assert len(later.layers) == 1 and len(inner.layers) == 1  # explain's collection closed with it


@torch._dynamo.config.patch(recompile_limit=3)  # not monkeypatch: undone through delattr, it hides the option
def test_repeated_explains_leave_the_callers_recompile_budget_alone(explains_apart):
    """A notebook re-running explain on a model it shares frames with (the frames after a graph break: Dynamo
    compiles them for the caller's model and for explain alike). explain's code must not pile up on them: past
    Dynamo's recompile limit explain would capture nothing, and the caller's model would run eagerly on new shapes."""
    model, x = Mlp(graph_break=True).eval(), torch.randn(32, 64)
    graphs: list = []
    compiled = torch.compile(model, backend=counting_backend(graphs))
    with torch.no_grad():
        compiled(x)
    compiled_graphs = len(graphs)

    for _ in range(torch._dynamo.config.recompile_limit + 1):
        report = lynx_compile.explain(model, x)
        assert [(layer.name, layer.decision) for layer in report.layers] == [("up", "sparse"), ("down", "sparse")]

    longer = torch.randn(48, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(longer), model(longer))
    assert len(graphs) > compiled_graphs  # compiled for the new shape, within the caller's own budget


class TwoBlocks(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Mlp(graph_break=True), Mlp(graph_break=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


@torch._dynamo.config.patch(recompile_limit=3)
def test_repeated_explains_of_a_regionally_compiled_model_report_every_time(explains_apart):
    """The blocks break the graph, so the frames after the break are compiled for the caller's regions and for
    explain's alike. With explain's options equal to the caller's, explain was served the caller's code there and
    reported nothing ("captured no graph"); repeated, it used up the caller's recompile budget."""
    model, x = TwoBlocks().eval(), torch.randn(32, 64)
    lynx_compile.compile_repeated_blocks(model, blocks=["Mlp"], options={"compiler": "eager"})
    with torch.no_grad():
        model(x)

    for _ in range(torch._dynamo.config.recompile_limit + 1):
        report = lynx_compile.explain(model, x, options={"compiler": "eager"})  # the caller's very options
        assert sorted((layer.name, layer.decision) for layer in report.layers) == [
            (f"blocks.{block}.{layer}", "sparse") for block in (0, 1) for layer in ("down", "up")
        ]

    with torch.no_grad(), lynx_compile.collect_reports() as later:
        model(torch.randn(48, 64))
    assert later.graphs  # compiled for the new shape, within the caller's own budget


@torch._dynamo.config.patch(recompile_limit=3)
def test_explain_reports_where_the_caller_spent_a_shared_frames_recompile_budget(explains_apart):
    """The caller's model, called with ever new token counts, has reached the recompile limit of the frame after its
    graph break: Dynamo compiles nothing more there, and runs any code of the frame whose guards pass. explain must
    still compile and report it (without isolate_recompiles, by resetting that frame first), and leave the caller's
    model right."""
    model = Mlp(graph_break=True).eval()
    graphs: list = []
    compiled = torch.compile(model, backend=counting_backend(graphs))
    with torch.no_grad():
        for tokens in (32, 40, 48, 56, 64):  # static, then dynamic: fewer recompiles than calls, so mark each
            x = torch.randn(tokens, 64)
            torch._dynamo.mark_static(x, 0)
            compiled(x)

    report = lynx_compile.explain(model, torch.randn(32, 64))
    assert [(layer.name, layer.decision) for layer in report.layers] == [("up", "sparse"), ("down", "sparse")]
    x = torch.randn(32, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
