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


def test_blocks_over_dtensor_weights_compile_regionally_and_stay_dense_with_the_reason():
    """DTensor (FSDP2, tensor parallelism) flattens to its local tensor and its device mesh, not a tensor: placing a
    graph over its instances reads the mesh's kind, not a dtype."""
    import torch.distributed as dist
    from test_regional import Stack
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        torch.manual_seed(0)
        model = Stack(count=2).eval()
        for linear in (module for module in model.modules() if isinstance(module, nn.Linear)):
            for name in ("weight", "bias"):
                value = distribute_tensor(getattr(linear, name).detach(), mesh, [Replicate()])
                setattr(linear, name, nn.Parameter(value, requires_grad=False))
        x = distribute_tensor(torch.randn(2, 24, 16), mesh, [Replicate()])
        with torch.no_grad():
            expected = model(x).to_local()
        lynx_compile.compile_repeated_blocks(model, options={"execution": "simulate", "compiler": "eager"})
        with torch.no_grad(), lynx_compile.collect_reports(model) as report:
            out = model(x).to_local()
    finally:
        dist.destroy_process_group()
    blocks = {f"blocks.{i}.{name}" for i in range(2) for name in ("inner", "out")}
    assert blocks <= {layer.name for layer in report.layers}
    for layer in report.layers:
        assert layer.decision == "dense" and "DTensor operand" in layer.reason, layer.name
    torch.testing.assert_close(out, expected)
