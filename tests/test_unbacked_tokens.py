"""A linear over a data-dependent number of tokens (a routed expert's, x[mask]: an unbacked SymInt under
capture_dynamic_output_shape_ops) stays dense with its reason; the rest of the graph is still rewritten."""

import torch

import lynx_compile
from test_zoo import run_with_pruning_hooks


class TokenChoiceMoE(torch.nn.Module):
    def __init__(self, d=64, experts=2):
        super().__init__()
        self.proj = torch.nn.Linear(d, d)
        self.gate = torch.nn.Linear(d, experts)
        self.experts = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(experts))

    def forward(self, x):
        x = self.proj(x)
        choice = self.gate(x).argmax(-1)
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            idx = (choice == i).nonzero().squeeze(-1)
            out = out.index_add(0, idx, expert(x[idx]))
        return (out,)  # as a diffusers model with return_dict=False


def test_data_dependent_token_count_keeps_the_graph_rewritten():
    torch.manual_seed(0)
    model, x = TokenChoiceMoE().eval(), torch.randn(32, 64)
    torch.compiler.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True, capture_scalar_outputs=True):
        compiled = torch.compile(model, backend="lynx", fullgraph=True,
                                 options={"execution": "simulate", "compiler": "eager", "strict": True})
        with torch.no_grad(), lynx_compile.collect_reports() as report:
            out = compiled(x)[0]
    rows = {layer.name: layer for layer in report.layers}
    assert rows["proj"].decision == "sparse"
    for name in ("experts.0", "experts.1"):
        assert rows[name].decision == "dense" and "data-dependent" in rows[name].reason
    ref = run_with_pruning_hooks(model, {"x": x}, {"proj"})  # proj pruned by hand, experts dense
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
