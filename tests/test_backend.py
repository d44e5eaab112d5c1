"""The backend on a small hand-written model: registration, options, fallbacks and awkward inputs."""

import importlib
import importlib.metadata
import logging

import pytest
import torch
import torch.nn as nn

import lynx_compile
from lynx_compile import backend as lynx_backend_module
from lynx_compile import passes


class Block(nn.Module):
    """attention-free DiT block: adaLN-style modulation from a per-sample embedding, then an MLP."""

    def __init__(self, dim=32, hidden=64):
        super().__init__()
        self.modulation = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, emb):
        shift, scale = self.modulation(emb).unsqueeze(1).chunk(2, dim=-1)
        h = self.norm(x) * (1 + scale) + shift
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(h)))


class TinyDiT(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim), Block(dim)])

    def forward(self, x, emb):
        for block in self.blocks:
            x = block(x, emb)
        return x


def inputs(batch=2, tokens=16, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, dim, generator=g), torch.randn(batch, dim, generator=g)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyDiT().eval()


def run(model, *args, **compile_kwargs):
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        out = torch.compile(model, backend="lynx", **compile_kwargs)(*args)
    return out, report


def test_backend_is_registered_by_entry_point_and_import():
    assert "lynx" in torch._dynamo.list_backends()
    (entry_point,) = [ep for ep in importlib.metadata.entry_points(group="torch_dynamo_backends") if ep.name == "lynx"]
    assert entry_point.load() is lynx_compile.lynx_backend
    importlib.reload(lynx_backend_module)
    lynx_backend_module.register()  # again: must not assert on a duplicate name
    importlib.reload(lynx_compile)


def test_simulate_is_default_and_reports_each_block_linear(model):
    out, report = run(model, *inputs(), fullgraph=True)
    decisions = {layer.name: layer.decision for layer in report.layers}
    assert decisions == {f"blocks.{i}.{name}": ("dense" if name == "modulation" else "sparse")
                         for i in range(2) for name in ("modulation", "fc1", "fc2")}  # fmt: skip
    assert all("tokens M=2" in layer.reason for layer in report.layers if layer.decision == "dense")
    assert torch.isfinite(out).all()


def test_dense_execution_is_the_inductor_baseline(model):
    x, emb = inputs()
    out, report = run(model, x, emb, options={"execution": "dense"})
    with torch.no_grad():
        baseline = torch.compile(model, backend="inductor")(x, emb)
        eager = model(x, emb)
    assert all(layer.decision == "dense" for layer in report.layers) and len(report.layers) == 6
    assert torch.equal(out, baseline)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


@pytest.fixture
def compile_fx_spy(monkeypatch):
    from torch._inductor import compile_fx as compile_fx_module

    seen = []
    real = compile_fx_module.compile_fx

    def spy(gm, example_inputs, config_patches=None, **kwargs):
        seen.append(dict(config_patches or {}))
        return real(gm, example_inputs, config_patches=config_patches, **kwargs)

    monkeypatch.setattr(compile_fx_module, "compile_fx", spy)
    return seen


@pytest.mark.parametrize(
    "compile_kwargs, expected",
    [
        ({"mode": "reduce-overhead"}, {"triton.cudagraphs": True}),
        ({"options": {"mode": "reduce-overhead", "execution": "dense"}}, {"triton.cudagraphs": True}),
        ({"options": {"triton.cudagraphs": True, "max_autotune": False}},
         {"triton.cudagraphs": True, "max_autotune": False}),
    ],
    ids=["mode", "mode-as-option", "inductor-options"],
)
def test_mode_and_inductor_options_reach_inductor(model, compile_fx_spy, compile_kwargs, expected):
    run(model, *inputs(), **compile_kwargs)
    patches = compile_fx_spy[0]  # compile_fx re-enters itself once the patches are applied
    assert {k: patches[k] for k in expected} == expected


def test_unknown_option_fails_with_the_list_of_valid_ones(model):
    with pytest.raises(Exception, match=r"unknown option.*'sparsity'.*lynx options are"):
        run(model, *inputs(), options={"sparsity": 0.5})


@torch._dynamo.config.patch(recompile_limit=2)  # not monkeypatch: undone through delattr, it hides the option
def test_the_last_compile_dynamo_allows_a_frame_says_what_comes_after(caplog):
    """Past `recompile_limit` Dynamo runs the frame eagerly: dense, without lynx. The compile that reaches the limit
    warns in lynx's words; the ones before do not; the eager call after it is still right."""
    layer = nn.Linear(64, 64)
    compiled = torch.compile(layer, backend="lynx", options={"compiler": "eager"})
    shapes = [(32, 64), (2, 32, 64), (2, 2, 32, 64)]  # a new rank each call: a recompile each
    warned, dense = [], []
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="lynx_compile"):
        for shape in shapes:
            caplog.clear()
            x = torch.randn(shape)
            dense.append(torch.equal(compiled(x), layer(x)))
            warned.append("Dynamo's last" in caplog.text)
    assert warned == [False, True, False] and dense == [False, False, True]


def test_a_failing_pass_warns_and_compiles_unchanged(model, monkeypatch, caplog):
    def broken(gm, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(passes, "PASSES", [*passes.PASSES, broken])
    x, emb = inputs()
    with caplog.at_level(logging.WARNING, logger="lynx_compile"):
        out, report = run(model, x, emb)
    assert "passes failed (RuntimeError: boom)" in caplog.text
    assert report.layers == []
    with torch.no_grad():
        torch.testing.assert_close(out, model(x, emb), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="boom"):
        run(model, x, emb, options={"strict": True})


def test_sparse_execution_without_the_sparse_path_stays_dense_with_the_reason(model):
    x, emb = inputs()
    out, report = run(model, x, emb, options={"execution": "sparse"})
    torch._dynamo.reset()
    dense, _ = run(model, x, emb, options={"execution": "dense"})
    assert report.layers and not report.sparse_layers
    expected_reasons = ("no sparse-tensor-core kernel for cpu", "tokens M=")
    assert all(layer.reason.startswith(expected_reasons) for layer in report.layers)
    assert torch.equal(out, dense)


def test_auto_execution_simulates_on_cpu(model):
    x, emb = inputs()
    auto, auto_report = run(model, x, emb)
    torch._dynamo.reset()
    simulated, simulate_report = run(model, x, emb, options={"execution": "simulate"})
    assert [layer.reason for layer in auto_report.layers] == [layer.reason for layer in simulate_report.layers]
    assert auto_report.sparse_layers and torch.equal(auto, simulated)


# ---- awkward inputs: no crash, defined result --------------------------------------------------------------------


def test_odd_in_features_stay_dense_with_reason():
    model = nn.Sequential(nn.Linear(18, 32), nn.GELU(), nn.Linear(32, 18)).eval()
    x = torch.randn(2, 16, 18)
    out, report = run(model, x)
    assert [(l.decision, l.reason) for l in report.layers] == [
        ("dense", "K=18 not a multiple of m=4"),
        ("sparse", "2:4 on K + norm, simulated; input gelu folded into the op")]  # fmt: skip
    assert out.shape == (2, 16, 18)


def test_single_token_runs_dense(model):
    x, emb = inputs(batch=1, tokens=1)
    out, report = run(model, x, emb)
    assert all(layer.decision == "dense" for layer in report.layers)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x, emb), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_input_matches_contiguous(model, dtype):
    model = model.to(dtype)
    x, emb = (t.to(dtype) for t in inputs(tokens=24))
    strided = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    out_strided, _ = run(model, strided, emb)
    torch._dynamo.reset()
    out, _ = run(model, x, emb)
    torch.testing.assert_close(out_strided, out, rtol=0, atol=0)


def test_channels_last_activation_into_a_linear():
    conv_then_linear = nn.Sequential(nn.Conv2d(8, 32, 1), nn.Flatten(2)).eval()
    head = nn.Linear(32, 32).eval()

    def forward(image):
        features = conv_then_linear(image).transpose(1, 2)  # (B, HW, C) view of a channels-last map
        return head(features)

    image = torch.randn(2, 8, 4, 4).to(memory_format=torch.channels_last)
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        out = torch.compile(forward, backend="lynx")(image)
        reference = torch.compile(forward, backend="lynx", options={"compiler": "eager"})(image.contiguous())
    assert [(layer.name, layer.decision) for layer in report.layers] == [("", "sparse")] * 2  # head: a bare Linear
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_changing_token_counts_recompile_no_more_than_inductor(model):
    counts = {}
    for backend in ("inductor", "lynx"):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=backend)
        with torch.no_grad():
            for tokens in (16, 24, 40, 8, 1, 64):
                x, emb = inputs(tokens=tokens)
                out = compiled(x, emb)
                assert out.shape == x.shape and torch.isfinite(out).all()
        counts[backend] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        torch._dynamo.utils.counters.clear()
    assert counts["lynx"] <= counts["inductor"]


def test_nan_input_propagates_like_dense(model):
    x, emb = inputs()
    x[0, 3, 5] = float("nan")
    out, _ = run(model, x, emb)
    with torch.no_grad():
        dense = model(x, emb)
    assert torch.equal(out.isnan(), dense.isnan())


def test_compiling_with_grad_enabled_trains_straight_through(model):
    x, emb = inputs()
    compiled = torch.compile(model, backend="lynx")
    loss = compiled(x, emb).square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


class NormedProjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.proj = nn.LayerNorm(64), nn.Linear(64, 64)

    def forward(self, x):
        return self.proj(self.norm(x))


def test_a_graph_dynamo_traces_again_after_a_restarted_analysis_is_reported_once():
    # With dynamic shapes, Inductor turns the norm's float eps into a tensor and has Dynamo restart its analysis: the
    # graph reaches the backend twice, and the first attempt, which never runs, was reported too.
    compiled = torch.compile(NormedProjection().eval(), backend="lynx", dynamic=True)
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        compiled(torch.randn(2, 24, 64))
    assert len(report.graphs) == 1 and [layer.name for layer in report.layers] == ["proj"]


def test_a_post_grad_pass_set_in_inductors_global_config_still_runs_after_lynxs_lowering(model):
    """lynx installs its lowering in Inductor's `post_grad_custom_post_pass` per compile; a pass the user set there
    globally was dropped on every graph lynx rewrote. It runs after lynx's now, on the graph lynx's ops are in."""
    from torch._inductor.custom_graph_pass import CustomGraphPass

    seen = []

    class Counting(CustomGraphPass):
        def __call__(self, graph):
            seen.append(sum("lynx" in str(node.target) for node in graph.nodes))  # simulate's ops stay whole

        def uuid(self):
            return b"counting"

    torch.compiler.reset()
    with torch._inductor.config.patch(post_grad_custom_post_pass=Counting(), fx_graph_cache=False):
        _, report = run(model, *inputs(), options={"execution": "simulate"})
    assert len(seen) == 1 and seen[0] == len(report.sparse_layers) > 0
