"""A linear whose weight or input is a tensor subclass (torchao's Float8Tensor, DTensor, ...) runs that subclass's
own kernels: lynx keeps it dense with the reason, and compiles the rest of the model as usual — never an error
inside the compile. (torchao float8 itself was checked by hand on the CPU, 2026-11-26: before this rule the lynx
backend failed with "Float8Tensor dispatch: attempting to run unimplemented operator lynx.sparse_linear".)"""

import pytest
import torch
import torch.nn as nn
from torch.testing._internal.two_tensor import TwoTensor

import lynx_compile
from lynx_compile.method import Method, sparse_linear_ref


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.wrapped = nn.Linear(32, 64)  # its weight becomes a subclass
        self.after = nn.Linear(64, 32)  # its input is the subclass that `wrapped` returns
        self.plain = nn.Linear(32, 32)

    def forward(self, x):
        return self.after(torch.relu(self.wrapped(x))), self.plain(x)


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_linears_with_subclass_operands_stay_dense_and_the_rest_compiles(compiler):
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(2, 24, 32)
    weight = model.wrapped.weight.detach()
    model.wrapped.weight = nn.Parameter(TwoTensor(weight, weight.clone()), requires_grad=False)
    with torch.no_grad():
        expected = (model.after(torch.relu(model.wrapped(x))),
                    sparse_linear_ref(x, model.plain.weight, model.plain.bias, Method()))  # fmt: skip
    torch.compiler.reset()
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        out = torch.compile(model, backend="lynx", options={"execution": "simulate", "compiler": compiler})(x)
    layers = {layer.name: layer for layer in report.layers}
    for name in ("wrapped", "after"):
        assert layers[name].decision == "dense", layers[name].reason
        assert "TwoTensor operand (a tensor subclass" in layers[name].reason
    assert layers["plain"].decision == "sparse"  # the rest of the model as usual
    torch.testing.assert_close(out[0], expected[0])
    torch.testing.assert_close(out[1], expected[1], rtol=1e-5, atol=1e-5)
