"""A sibling group's weights packed as row blocks of one buffer (`lynx_compile.packing`): the same parameters, values,
names, files and gradients; in-place changes seen by the one GEMM; a replaced weight still correct; no second copy
of the weights; every instance packed under regional compilation."""

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import lynx_compile
from lynx_compile.method import Method, sparse_linear_ref
from lynx_compile.packing import adjacent_rows, pack_rows
from lynx_compile.paths import PATHS, SparsePath, clear_measurements, register_path
from lynx_compile.paths.cusparselt import SPARSE_MMS, Cusparselt


def parameters(rows, k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(n, k, generator=g)) for n in rows]


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.integers(1, 9), min_size=1, max_size=5), k=st.integers(1, 12),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))  # fmt: skip
def test_packing_keeps_each_parameter_and_its_values_and_forms_their_concatenation(rows, k, dtype):
    params = [nn.Parameter(p.detach().to(dtype)) for p in parameters(rows, k)]
    objects, values = [id(p) for p in params], [p.detach().clone() for p in params]
    assert pack_rows(params) is None
    assert [id(p) for p in params] == objects and all(isinstance(p, nn.Parameter) and p.requires_grad for p in params)
    assert all(torch.equal(p.detach(), v) for p, v in zip(params, values))
    matrix = adjacent_rows(params)
    assert matrix is not None and torch.equal(matrix, torch.cat(values))
    buffer = params[0].detach().untyped_storage()
    assert buffer.nbytes() == sum(v.numel() for v in values) * values[0].element_size()  # one buffer, no slack
    assert pack_rows(params) is None and adjacent_rows(params).data_ptr() == matrix.data_ptr()  # packed stays


def test_an_in_place_change_is_what_the_packed_matrix_holds_and_gradients_reach_each_parameter():
    params = parameters([4, 4, 12])
    pack_rows(params)
    matrix = adjacent_rows(params)
    with torch.no_grad():
        params[1].mul_(3)
        params[2].copy_(torch.ones(12, 8))
    assert torch.equal(matrix[4:8], params[1].detach()) and torch.equal(matrix[8:], torch.ones(12, 8))
    x = torch.randn(5, 8)
    sum(F.linear(x, p).square().sum() for p in params).backward()
    for p in params:
        assert p.grad is not None and p.grad.shape == p.shape
        torch.testing.assert_close(p.grad, 2 * F.linear(x, p).t() @ x)


def test_packed_parameters_save_and_load_as_separate_tensors(tmp_path):
    module = nn.ModuleDict({name: nn.Linear(8, n) for name, n in (("q", 4), ("k", 4), ("mlp", 12))})
    before = {name: value.clone() for name, value in module.state_dict().items()}
    pack_rows([module[name].weight for name in ("q", "k", "mlp")])
    assert set(module.state_dict()) == set(before)
    save_file(module.state_dict(), str(tmp_path / "packed.safetensors"))  # refused if the views overlapped
    loaded = load_file(str(tmp_path / "packed.safetensors"))
    assert all(torch.equal(loaded[name], value) for name, value in before.items())
    torch.save(module.state_dict(), tmp_path / "packed.pt")
    assert all(torch.equal(value, before[name]) for name, value in torch.load(tmp_path / "packed.pt").items())


class Subclassed(torch.Tensor):
    pass


@pytest.mark.parametrize("case, reason", [
    ("subclass", "tensor subclass"), ("k", "differ in K"), ("dtype", "differ in K, dtype"),
    ("inference", "inference tensors"), ("shared", "shares its storage"),
])  # fmt: skip
def test_weights_that_cannot_be_packed_are_left_as_they_were(case, reason):
    params = parameters([4, 4])
    if case == "subclass":
        params[1] = torch.randn(4, 8).as_subclass(Subclassed)
    elif case == "k":
        params[1] = nn.Parameter(torch.randn(4, 6))
    elif case == "dtype":
        params[1] = nn.Parameter(torch.randn(4, 8, dtype=torch.float64))
    elif case == "shared":  # views into a buffer of someone else's (FSDP's flat parameter), not in our order
        flat = torch.randn(40, 8)
        params = [nn.Parameter(flat[8:12]), nn.Parameter(flat[0:4])]
    else:
        with torch.inference_mode():
            params = [torch.randn(4, 8), torch.randn(4, 8)]
    pointers = [p.data_ptr() for p in params]
    assert reason in pack_rows(params)
    assert [p.data_ptr() for p in params] == pointers


def test_only_consecutive_rows_in_order_form_the_matrix():
    buffer = torch.randn(20, 8)
    a, b, c = buffer[:4], buffer[4:8], buffer[8:]
    assert torch.equal(adjacent_rows([a, b, c]), buffer)
    assert adjacent_rows([b, a, c]) is None  # out of order
    assert adjacent_rows([a, c]) is None  # a gap
    assert adjacent_rows([a, b.clone()]) is None  # another storage
    assert adjacent_rows([buffer[:, :4], buffer[:, 4:]]) is None  # column blocks are not rows
    assert adjacent_rows([buffer.t()[:4]]) is None  # not contiguous


# ---- the group op's GEMM over packed weights, on the CPU through a path whose GEMM is a dense one -------------------


class DenseMm(Cusparselt):
    """A stand-in for a sparse-tensor-core path: `sparse_mm` is x̃·Wᵀ in plain torch and records the W it got."""

    name = "dense_mm_for_tests"
    seen: list = []

    def sparse_mm(self, operand, weight, algorithm):
        self.seen.append(weight)
        return operand @ weight.t()


@pytest.fixture
def dense_mm():
    path = register_path(DenseMm())
    DenseMm.seen.clear()
    yield path
    del PATHS[DenseMm.name], SPARSE_MMS[DenseMm.name]


def test_the_rows_op_runs_one_gemm_on_the_packed_buffer_and_concatenates_unpacked_weights(dense_mm, caplog):
    operand = torch.randn(6, 8)
    params = parameters([4, 4, 12], seed=1)
    expected = operand @ torch.cat([p.detach() for p in params]).t()
    with caplog.at_level(logging.WARNING, logger="lynx_compile"):
        unpacked = torch.ops.lynx.cslt_rows_mm(operand, [p.detach() for p in params], 0, DenseMm.name)
    torch.testing.assert_close(unpacked, expected)
    assert "not packed in one buffer" in caplog.text
    pack_rows(params)
    packed = torch.ops.lynx.cslt_rows_mm(operand, [p.detach() for p in params], 0, DenseMm.name)
    torch.testing.assert_close(packed, expected)
    assert DenseMm.seen[-1].data_ptr() == params[0].data_ptr() and DenseMm.seen[-1].shape == (20, 8)  # no copy


# ---- compiling packs the groups a packing path runs ---------------------------------------------------------------


class PackingToy(SparsePath):
    """Runs on the CPU with the simulate numerics, groups as one GEMM over the members' weights where asked
    (`workload.packed`), and records whether each call found them packed."""

    name = "packing_toy"
    groups = True
    found_packed: list = []

    def runs_on(self, device):
        return device.type == "cpu"

    def tune(self, workload, timer):
        return ({"packed": True} if workload.packed else {}), 1e-9  # far faster than dense

    def forward(self, inputs, weight, bias, lora, plan):
        return PATHS["simulate"].forward(inputs, weight, bias, lora, plan)

    def lower_group(self, inputs, weights, biases, plan):  # Inductor traces it on fake tensors: no storage to check
        return super().forward_group(inputs, weights, biases, plan)

    def forward_group(self, inputs, weights, biases, plan):
        matrix = adjacent_rows(weights)
        self.found_packed.append(matrix is not None)
        out = self.forward(inputs, matrix if matrix is not None else torch.cat(weights), None, None, plan)
        return [y if b is None else y + b for y, b in zip(out.split([w.shape[0] for w in weights], -1), biases)]


@pytest.fixture
def packing_toy(tmp_path, monkeypatch):
    monkeypatch.setenv("LYNX_CACHE_DIR", str(tmp_path))
    saved = {name: PATHS.pop(name) for name in list(PATHS) if PATHS[name].execution == "sparse"}
    path = register_path(PackingToy())
    PackingToy.found_packed.clear()
    clear_measurements()
    yield path
    del PATHS[PackingToy.name]
    PATHS.update(saved)
    clear_measurements()


class Attention(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False), nn.Linear(dim, 64)

    def forward(self, x):
        h = self.norm(x)
        return torch.cat([self.to_q(h) * self.to_k(h), self.to_v(h)], dim=-1)


def reference(module, x):
    h = module.norm(x)
    q, k, v = (sparse_linear_ref(h, m.weight, m.bias, Method()) for m in (module.to_q, module.to_k, module.to_v))
    return torch.cat([q * k, v], dim=-1)


def weight_bytes(module):
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in module.parameters()}
    return sum(storages.values())


EAGER = {"execution": "sparse", "compiler": "eager", "pack_siblings": True}


def test_compiling_packs_a_group_without_a_second_copy_and_runs_what_the_weights_hold(packing_toy):
    torch.manual_seed(0)
    module, x = Attention().eval(), torch.randn(2, 12, 32)
    before = weight_bytes(module)
    with lynx_compile.collect_reports() as report:
        compiled = torch.compile(module, backend="lynx", options=EAGER)
        with torch.no_grad():
            out = compiled(x)
    assert {layer.name for layer in report.layers if layer.siblings} == {"to_q", "to_k", "to_v"}
    assert all("one GEMM over their packed weights" in layer.reason for layer in report.layers if layer.siblings)
    assert adjacent_rows([module.to_q.weight, module.to_k.weight, module.to_v.weight]) is not None
    assert weight_bytes(module) <= before * 1.02  # the old storages went: one copy of the weights
    assert PackingToy.found_packed == [True]
    torch.testing.assert_close(out, reference(module, x), rtol=1e-5, atol=1e-5)

    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.no_grad():  # a weight changed in place after compiling (a LoRA fused in, say): the next call runs it
        module.to_k.weight.mul_(-2)
        module.to_v.weight.add_(0.5)
        torch.testing.assert_close(compiled(x), reference(module, x), rtol=1e-5, atol=1e-5)
    assert PackingToy.found_packed == [True, True]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # re-pointed weights: no recompile

    module.to_k.weight = nn.Parameter(torch.randn(32, 32))  # replaced: no longer in the buffer
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), reference(module, x), rtol=1e-5, atol=1e-5)
    assert PackingToy.found_packed[-1] is False  # concatenated for the call, still right


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()

    def forward(self, x):
        return x + self.attn(x)[..., :32]


class Blocks(nn.Module):
    _repeated_blocks = ["Block"]

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(3))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_regional_compilation_packs_every_instance_the_block_graph_serves(packing_toy, compiler):
    torch.manual_seed(0)
    torch.compiler.reset()
    model, x = Blocks().eval(), torch.randn(2, 12, 32)
    expected = x
    for block in model.blocks:
        expected = expected + reference(block.attn, expected)[..., :32]
    lynx_compile.compile_repeated_blocks(model, options={**EAGER, "compiler": compiler})
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):
        out = model(x)
        torch.testing.assert_close(model(x), out)  # a second call: the packed weights, the same result
    for block in model.blocks:
        attn = block.attn
        assert adjacent_rows([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]) is not None
    if compiler == "eager":  # Inductor runs the toy's lowering, which never checks
        assert PackingToy.found_packed == [True] * 6
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_with_inductor_the_weights_are_packed_after_compiling_and_nothing_recompiles(packing_toy):
    """Packing re-points the parameters once Inductor has compiled the graph: its fake tensors of them were made
    from the weights as Dynamo saw them, and a later call must not retrace."""
    torch.manual_seed(0)
    module, x = Attention().eval(), torch.randn(2, 12, 32)
    compiled = torch.compile(module, backend="lynx", options={"execution": "sparse", "pack_siblings": True})
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):
        out = compiled(x)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        again = compiled(x)
    assert adjacent_rows([module.to_q.weight, module.to_k.weight, module.to_v.weight]) is not None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(out, reference(module, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, out)


def test_without_the_option_a_group_keeps_its_members_weights_apart(packing_toy):
    torch.manual_seed(0)
    module, x = Attention().eval(), torch.randn(2, 12, 32)
    pointers = [module.to_q.weight.data_ptr(), module.to_k.weight.data_ptr(), module.to_v.weight.data_ptr()]
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        out = torch.compile(module, backend="lynx", options={**EAGER, "pack_siblings": False})(x)
    assert all("x pruned once for 3 GEMMs" in layer.reason for layer in report.layers if layer.siblings)
    assert [module.to_q.weight.data_ptr(), module.to_k.weight.data_ptr(), module.to_v.weight.data_ptr()] == pointers
    assert PackingToy.found_packed == [False]
    torch.testing.assert_close(out, reference(module, x), rtol=1e-5, atol=1e-5)
