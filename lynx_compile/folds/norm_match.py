"""Finding a norm and its adaLN modulation in Dynamo's graph: the steps `Norm.match` walks from x back to t.

Each step accepts only what the loader reproduces bit for bit: calls whose value goes on to x's consumers alone,
casts that round at most once (a narrowing from fp32), a `1 + a` computed in a's dtype, modulation operands that
broadcast over x's rows in blocks of consecutive rows, and a norm over x's last dimension alone.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn.functional as F

from .base import argument, fake_value

LAYER_NORMS = {F.layer_norm, torch.layer_norm}
RMS_NORMS = {f for f in (getattr(F, "rms_norm", None), getattr(torch, "rms_norm", None)) if f is not None}
MULS = {operator.mul, torch.mul}
ADDS = {operator.add, torch.add}
CAST_METHODS = {"to", "type_as", "float", "bfloat16", "half"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_call(node: torch.fx.Node, targets: set, x: torch.fx.Node) -> bool:
    """A call of one of `targets` whose value goes on only to x's consumers: x itself (the linear, or the sibling
    group whose users `group_siblings` checks), or a node with one user."""
    return node.op == "call_function" and node.target in targets and (node is x or len(node.users) == 1)


def through_casts(node: torch.fx.Node, absorbed: list[torch.fx.Node], x: torch.fx.Node) -> torch.fx.Node | None:
    """The node under a chain of dtype casts (each with one user, or x itself), the casts absorbed; None where a value
    on the way is not a float of `DTYPES` or the chain rounds twice (a narrowing not from fp32), which the loader's
    one rounding cannot reproduce."""
    casts = []
    while node.op == "call_method" and node.target in CAST_METHODS and node.args \
            and isinstance(node.args[0], torch.fx.Node) and (node is x or len(node.users) == 1):  # fmt: skip
        value, source = fake_value(node), fake_value(node.args[0])
        if not isinstance(value, torch.Tensor) or not isinstance(source, torch.Tensor) \
                or value.shape != source.shape or value.device != source.device:  # fmt: skip
            break
        casts.append(node)
        node = node.args[0]
    # From the innermost value outwards: widening to fp32 is exact; one narrowing from fp32 rounds once.
    current = dtype_name(node)
    for cast in reversed(casts):
        target = dtype_name(cast)
        if target is None or current is None or (target != current and "float32" not in (current, target)):
            return None
        current = current if target == "float32" else target
    if current is None:
        return None
    absorbed.extend(casts)
    return node


def through_widening_casts(node: torch.fx.Node, absorbed: list[torch.fx.Node]) -> torch.fx.Node:
    """t under casts to fp32 (exact), the norm's input as the loader reads it."""
    while node.op == "call_method" and node.target in CAST_METHODS and len(node.users) == 1 and node.args \
            and isinstance(node.args[0], torch.fx.Node) and dtype_name(node) == "float32":  # fmt: skip
        absorbed.append(node)
        node = node.args[0]
    return node


def dtype_name(node: torch.fx.Node) -> str | None:
    value = fake_value(node)
    dtype = getattr(value, "dtype", None)
    return next((name for name, known in DTYPES.items() if known == dtype), None)


def under_one_plus(node: torch.fx.Node) -> torch.fx.Node | None:
    """s of a one-user `1 + s` (or `s + 1`) of the dtype of s, else None."""
    if not is_call(node, ADDS, None) or len(node.args) != 2 or node.kwargs:
        return None
    for one, s in (node.args, node.args[::-1]):
        if one == 1 and isinstance(s, torch.fx.Node) and dtype_name(s) is not None and dtype_name(s) == \
                dtype_name(node):  # fmt: skip
            return s
    return None


def split_modulation(node: torch.fx.Node, x_value: torch.Tensor) -> tuple[torch.fx.Node, torch.fx.Node] | None:
    """(the operand leading to the norm, the broadcast one) of a binary add or mul; None if neither fits."""
    if len(node.args) != 2 or node.kwargs or not all(isinstance(arg, torch.fx.Node) for arg in node.args):
        return None
    for main, other in (node.args, node.args[::-1]):
        main_value = fake_value(main)
        if isinstance(main_value, torch.Tensor) and main_value.shape == x_value.shape \
                and modulation_rows(fake_value(other), x_value) is not None:  # fmt: skip
            return main, other
    return None


def modulation_rows(value: object, x_value: torch.Tensor) -> int | None:
    """The rows of a broadcast operand over x's rows, when row r of x takes its row r // (rows / R): its leading dims
    match x's, the rest are 1, its last is K."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim > x_value.ndim \
            or value.ndim == 0 or value.shape[-1] != x_value.shape[-1]:  # fmt: skip
        return None
    shape = [1] * (x_value.ndim - value.ndim) + list(value.shape)
    leading = 0
    while leading < x_value.ndim - 1 and shape[leading] != 1:
        leading += 1
    if any(shape[d] != 1 for d in range(leading, x_value.ndim - 1)):
        return None
    if any(shape[d] != x_value.shape[d] for d in range(leading)):
        return None
    rows = 1
    for d in range(leading):
        rows *= shape[d]
    return rows


def norm_call(node: torch.fx.Node, x: torch.fx.Node, x_value: torch.Tensor):
    """(kind, input, weight, bias, eps) of a layer or RMS norm over x's last dim, x or with one user; else None."""
    if node.op != "call_function" or not (node is x or len(node.users) == 1):
        return None
    if node.target in LAYER_NORMS:
        kind, bias = "layer", argument(node, 3, "bias")
        weight, eps = argument(node, 2, "weight"), argument(node, 4, "eps", 1e-5)
    elif node.target in RMS_NORMS:
        kind, bias = "rms", None
        weight, eps = argument(node, 2, "weight"), argument(node, 3, "eps")
    else:
        return None
    source, shape = argument(node, 0, "input"), argument(node, 1, "normalized_shape")
    k = x_value.shape[-1]
    if not isinstance(source, torch.fx.Node) or list(shape if isinstance(shape, (list, tuple)) else [shape]) != [k]:
        return None
    if eps is None:  # rms_norm's default: the epsilon of the type it computes in (fp32 for 16-bit inputs)
        eps = torch.finfo(torch.promote_types(fake_value(source).dtype, torch.float32)).eps
    if not isinstance(eps, (int, float)):
        return None
    if bias is not None and weight is None:  # F.layer_norm(t, shape, None, b): no affine kind loads a bias alone
        return None
    for operand in (weight, bias):
        if operand is not None and (not isinstance(operand, torch.fx.Node)
                                    or tuple(getattr(fake_value(operand), "shape", ())) != (k,)):  # fmt: skip
            return None
    return kind, source, weight, bias, float(eps)
