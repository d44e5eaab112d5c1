"""In-place writes a fold must not be moved past.

A fold makes x where the linear runs, from its producer's inputs: `t = fc1(x); h = gelu(t); t.mul_(-3); fc2(h)`
folded would read t after the write and compute fc2(gelu(-3t)). So a fold is refused where a node between its
producer and the linear writes in place to a tensor that shares storage with what the producer reads: as the graph
shows it (a written tensor followed back through views, and through in-place ops, which return what they wrote, to
the node that made its storage; so are the producer's inputs), and as the traced values show it, where the graph
does not (a cast that returns its input unchanged, `t.float()` of an fp32 t; two graph inputs over one storage:
their fake tensors share it). Writes to other tensors, and writes before the producer, which the producer itself
saw, leave the fold alone.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from .base import FoldMatch

_VIEW_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "transpose", "permute", "t", "unsqueeze", "squeeze", "expand",
    "expand_as", "narrow", "select", "chunk", "split", "split_with_sizes", "tensor_split", "unbind", "flatten",
    "unflatten", "contiguous", "detach", "as_strided", "movedim", "moveaxis", "swapaxes", "swapdims", "diagonal",
    "unfold", "__getitem__", "T", "mT", "H", "mH", "real", "imag", "view_as_real", "view_as_complex",
}  # fmt: skip
_VIEW_FUNCTIONS = {
    operator.getitem, getattr, torch.reshape, torch.transpose, torch.permute, torch.t, torch.unsqueeze,
    torch.squeeze, torch.narrow, torch.select, torch.chunk, torch.split, torch.tensor_split, torch.unbind,
    torch.flatten, torch.unflatten, torch.movedim, torch.moveaxis, torch.swapaxes, torch.swapdims, torch.diagonal,
    torch.detach, torch.as_strided, torch.view_as_real, torch.view_as_complex,
}  # fmt: skip
_INPLACE_OPERATORS = {
    operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
    operator.imatmul,
}  # fmt: skip


def written(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The tensors `node` writes in place: a method or torch function named with a trailing underscore (`mul_`,
    `torch.relu_`), Python's in-place operators and item assignment, `inplace=True`, `out=`, and ATen ops whose
    schema writes an argument."""
    if node.op not in ("call_method", "call_function"):
        return []
    first = [node.args[0]] if node.args and isinstance(node.args[0], torch.fx.Node) else []
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if isinstance(name, str) and ((name.endswith("_") and not name.endswith("__")) or name.startswith("__i")):
        return first
    if node.target in _INPLACE_OPERATORS or node.kwargs.get("inplace") is True:
        return first
    out = node.kwargs.get("out")
    if out is not None:
        return [item for item in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(item, torch.fx.Node)]
    schema = getattr(node.target, "_schema", None)
    if schema is not None and schema.is_mutable:
        arguments = [*node.args, *(node.kwargs.get(argument.name) for argument in schema.arguments[len(node.args):])]
        return [value for argument, value in zip(schema.arguments, arguments)
                if argument.alias_info is not None and argument.alias_info.is_write
                and isinstance(value, torch.fx.Node)]  # fmt: skip
    return []


def storage(node: torch.fx.Node) -> torch.fx.Node:
    """The node that made `node`'s storage, as far as the graph tells: back through views, and through in-place
    ops (which return the tensor they wrote)."""
    while node.args and isinstance(node.args[0], torch.fx.Node):
        view = node.target in _VIEW_METHODS if node.op == "call_method" else node.target in _VIEW_FUNCTIONS
        if not (view and node.op in ("call_method", "call_function")) and not written(node):
            break
        node = node.args[0]
    return node


def storages(node: torch.fx.Node) -> set:
    """Keys of the storage `node` lives in: the node that made it (`storage`), and where its traced value is a
    tensor, that value's storage."""
    keys: set = {storage(node)}
    value = node.meta.get("example_value", node.meta.get("val"))
    if isinstance(value, torch.Tensor):
        try:
            keys.add(("storage", value.untyped_storage()._cdata))
        except (RuntimeError, NotImplementedError):  # a tensor without a storage of its own (a subclass)
            pass
    return keys


def write_past_the_fold(found: FoldMatch, x: torch.fx.Node) -> torch.fx.Node | None:
    """A node that writes in place, between the fold's producer and the last of x's users, to storage the producer
    reads (`found.inputs`, and the absorbed nodes' own inputs); None where there is none."""
    absorbed = set(found.absorbed)
    if not absorbed or not x.users:
        return None
    read = {key for node in found.inputs if isinstance(node, torch.fx.Node) for key in storages(node)}
    read |= {key for node in absorbed for arg in node.all_input_nodes for key in storages(arg)}
    users, node = set(x.users), x
    while users:  # forward to the last user of x
        node = node.next
        users.discard(node)
        if node.op == "root":
            return None
    while absorbed:  # back from it to the first producer node, looking at every node in between
        node = node.prev
        absorbed.discard(node)
        if node.op == "root":
            return None
        if any(storages(target) & read for target in written(node)):
            return node
    return None
