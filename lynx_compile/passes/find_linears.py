"""Find every linear whose weight is a module parameter, in any form Dynamo records it.

diffusers goes through `nn.Linear` (`torch._C._nn.linear` in the graph), but hand-written blocks also spell a
linear as `x @ w.t()`, `torch.matmul(x, w.T)` or `torch.addmm(b, x, w.t())`; a fused QKV is just a wider linear.
All of them become one `LinearSite` carrying the parameter itself (not its transpose), the owning module's
qualified name relative to the module it was reached through (`place_linears` then places it in the model) and the
sizes the decision needs. Matmuls between two activations (attention) are not linears.
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx

from ..float8 import is_float8_weight
from ..folds import match_producer
from ..method import token_rows
from .autocast import autocast_dtypes
from .names import parameter_name, source_name
from .utils import LinearSite, PassContext, fake_value

logger = logging.getLogger(__name__)

_LINEAR_FUNCTIONS = {torch._C._nn.linear, torch.nn.functional.linear}
_MATMUL_FUNCTIONS = {torch.matmul, torch.mm, operator.matmul}
_MATMUL_METHODS = {"matmul", "mm", "__matmul__"}
_TRANSPOSE_FUNCTIONS = {torch.t, torch.transpose, torch.permute, torch.Tensor.t}


def _untransposed(node: object) -> torch.fx.Node | None:
    """If `node` is the 2-D transpose of another node (w.t(), w.T, w.transpose(0, 1), w.permute(1, 0)), return w."""
    if not isinstance(node, torch.fx.Node):
        return None
    source, rest = (node.args[0], node.args[1:]) if node.args else (None, ())
    if node.op == "call_function" and node.target is getattr and rest in (("T",), ("mT",)):
        return source
    is_method = node.op == "call_method" and node.target in ("t", "transpose", "permute")
    is_function = node.op == "call_function" and node.target in _TRANSPOSE_FUNCTIONS
    if not (is_method or is_function) or node.kwargs:
        return None
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):  # permute((1, 0))
        rest = tuple(rest[0])
    if not all(isinstance(dim, int) and -2 <= dim <= 1 for dim in rest):
        return None
    dims = tuple(dim % 2 for dim in rest)  # of a 2-D weight (checked where the row is made)
    # t(); transpose(a, b) swaps two different dims; permute(dims) swaps them only as (1, 0): permute(0, 1) and
    # permute(-2, -1) leave the weight as it is
    permuted = node.target in ("permute", torch.permute)
    if rest == () or (dims == (1, 0) if permuted else len(dims) == 2 and dims[0] != dims[1]):
        return source
    return None


def _operands(node: torch.fx.Node) -> tuple[str, object, object, object] | None:
    """(form, x, weight-as-stored (N, K), bias) for a node that computes a linear, else None."""
    args, kwargs = node.args, node.kwargs
    if node.op == "call_function" and node.target in _LINEAR_FUNCTIONS:
        x = args[0] if args else kwargs.get("input")
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        return "linear", x, weight, bias
    is_matmul = (node.op == "call_function" and node.target in _MATMUL_FUNCTIONS) or (
        node.op == "call_method" and node.target in _MATMUL_METHODS
    )
    if is_matmul and len(args) == 2 and not kwargs:
        return "matmul", args[0], _untransposed(args[1]), None
    is_addmm = (node.op == "call_function" and node.target is torch.addmm) or (
        node.op == "call_method" and node.target == "addmm"
    )
    scaled = any(kwargs.get(k, 1) != 1 for k in ("beta", "alpha"))
    if is_addmm and len(args) == 3 and not scaled and set(kwargs) <= {"beta", "alpha"}:
        return "addmm", args[1], _untransposed(args[2]), args[0]
    return None


def find_linears(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    """Record a `LinearSite` for each linear with a module-parameter weight (the graph is left unchanged)."""
    autocast = autocast_dtypes(gm.graph)
    from_inputs = _reads_graph_inputs(gm)
    for node in gm.graph.nodes:
        operands = _operands(node)
        if operands is None:
            continue
        form, x, weight, bias = operands
        if not isinstance(weight, torch.fx.Node) or not isinstance(x, torch.fx.Node):
            continue
        x_value, weight_value = fake_value(x), fake_value(weight)
        found, view = parameter_name(weight, gm), None
        if found is None:  # a view of a parameter: reported dense (`weight` becomes the parameter's node)
            weight, found, view = _viewed_parameter(weight, gm)
        if found is None or not isinstance(x_value, torch.Tensor) or getattr(weight_value, "ndim", 0) != 2:
            logger.debug("lynx: %s (%s) is not a linear over a module parameter", node.name, form)
            continue
        if bias is not None and not isinstance(bias, torch.fx.Node):
            continue  # a constant bias is legal torch but never produced by a module; leave it alone
        out_features, in_features = (int(s) for s in weight_value.shape)
        tokens = token_rows(x_value)
        # The dtype the linear computes in, as Dynamo recorded its output: under autocast the operands' cast one.
        dtype = getattr(fake_value(node), "dtype", x_value.dtype)
        fold = match_producer(x)
        if fold is not None and any(value.dtype != dtype for value in fold.values()[: fold.typed]):
            fold = None  # autocast casts x after its producer ran; folded, the op would cast the producer's inputs
        ctx.sites.append(
            LinearSite(
                node=node, x=x, weight=weight, bias=bias, form=form, name=found.linear_name, tokens=tokens,
                in_features=in_features, out_features=out_features, dtype=dtype, device=x_value.device,
                autocast=autocast[node].get(x_value.device.type), fold=fold, name_problem=found.problem,
                weight_name=found, float8=is_float8_weight(weight_value), weight_view=view,
                weights_only=not from_inputs[x] and _rows_not_tokens(x_value),
            )
        )  # fmt: skip
    _flag_shared_weights(ctx.sites)
    _warn_about_subgraph_linears(gm)
    logger.debug("lynx: found %d linears", len(ctx.sites))
    return gm


def _rows_not_tokens(x_value: torch.Tensor) -> bool:
    """Whether rows made of weights and constants alone are a weight's rows rather than tokens: a 2-D x (peft's
    DoRA norm `lora_B(lora_A(eye(K)))`, a buffer's rows). A batch of rows (≥ 3-D: a Perceiver's learned queries or
    a modulation of a constant timestep, expanded over the batch and the sequence) is a sequence of tokens like any
    other, and is decided as one: also as `lynx_compile.compile_repeated_blocks` decides it, where a linear outside
    the blocks is compiled on its own and its x is a graph input whatever made it."""
    return x_value.dim() <= 2


def _reads_graph_inputs(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, bool]:
    """Per node, whether its value depends on one of the graph's inputs other than a module's parameters and buffers:
    an activation. A linear over a node that does not (peft's DoRA norms `lora_B(lora_A(eye(K)))`: a weight made at
    run time) has no activation to prune."""
    reads: dict[torch.fx.Node, bool] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            reads[node] = not _module_state(node, gm)
        else:
            reads[node] = any(reads.get(arg, False) for arg in node.all_input_nodes)
    return reads


def _module_state(node: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    """Whether a placeholder holds a module's parameter or buffer (Dynamo's source passes through the module)."""
    if parameter_name(node, gm) is not None:
        return True
    source = getattr(node.meta.get("grapharg"), "source", None)
    while source is not None:
        if type(source).__name__.endswith("NNModuleSource"):
            return True
        source = getattr(source, "base", None)
    return False


# ops that run a module's projections inside themselves: nn.MultiheadAttention (Dynamo keeps it one call) and
# nn.TransformerEncoderLayer's inference fast path
_FUSED_PROJECTIONS = {torch.nn.functional.multi_head_attention_forward} | {
    getattr(torch, name) for name in ("_native_multi_head_attention", "_transformer_encoder_layer_fwd")
    if hasattr(torch, name)}  # fmt: skip


def _warn_about_subgraph_linears(gm: torch.fx.GraphModule) -> None:
    """Linears inside a higher-order op's subgraph (activation checkpointing, `torch.cond`, a nested compile region)
    are not rewritten: the passes read the graph's top level only; nor are the projections inside a fused attention
    op. Say so, rather than leave them dense unseen."""
    inner = [f"{name}.{node.name}" for name, module in gm.named_modules() if name
             and isinstance(module, torch.fx.GraphModule) for node in module.graph.nodes
             if _operands(node) is not None]  # fmt: skip
    if inner:
        logger.warning("lynx: %d linear call(s) inside higher-order ops' subgraphs (activation checkpointing, "
                       "torch.cond, nested compile regions) run dense, not rewritten: %s", len(inner),
                       ", ".join(inner[:5]) + (" ..." if len(inner) > 5 else ""))  # fmt: skip
    fused = [node.name for node in gm.graph.nodes if node.op == "call_function" and node.target in _FUSED_PROJECTIONS]
    if fused:
        logger.warning("lynx: %d fused attention op(s) (nn.MultiheadAttention, nn.TransformerEncoderLayer's fast "
                       "path) run their projections inside themselves, dense, not rewritten: %s", len(fused),
                       ", ".join(fused[:5]) + (" ..." if len(fused) > 5 else ""))  # fmt: skip


def _viewed_parameter(weight: torch.fx.Node, gm: torch.fx.GraphModule, steps: int = 4) -> tuple:
    """(the parameter's node, its name, what was done to it) where the weight is made of a module parameter by a few
    operations on it alone (`w.chunk(3)[0]`, `w.t()` in `F.linear`, `w.float()`), or by a parametrization
    (`torch.nn.utils.parametrize`: weight norm, orthogonal) of one module's parameters: the layer is reported, dense,
    with that reason, under that module's name; (weight, None, None) otherwise."""
    done, node = [], weight
    for _ in range(steps):
        source = node.args[0] if node.op in ("call_function", "call_method") and node.args else None
        if not isinstance(source, torch.fx.Node):
            break
        done.append(node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "an op"))
        node = source
        found = parameter_name(node, gm)
        if found is not None and found.problem is None:
            return node, found, " then ".join(reversed(done))
    return _parametrized(weight, gm)


def _parametrized(weight: torch.fx.Node, gm: torch.fx.GraphModule, limit: int = 256) -> tuple:
    """(an original's node, the weight's name, "a parametrization") where every input the weight is computed from,
    however many operations away, is an original of one parametrized tensor; (weight, None, None) otherwise."""
    seen, stack, originals = {weight}, [weight], []
    while stack:
        node = stack.pop()
        found = parameter_name(node, gm) if node.op in ("placeholder", "get_attr") else None
        if found is not None and found.problem is None:
            originals.append((node, found))
            continue
        if node.op in ("placeholder", "get_attr") and _parametrization_state(node, gm):
            continue  # a parametrization's own buffer (orthogonal's `base`)
        if node.op in ("placeholder", "get_attr") or len(seen) > limit:
            return weight, None, None  # a graph input, a buffer or a constant tensor: not a parametrization alone
        for source in node.all_input_nodes:
            if source not in seen:
                seen.add(source)
                stack.append(source)
    if not originals or not all(found.parametrized for _, found in originals) \
            or len({(found.root, found.linear_name) for _, found in originals}) != 1:  # fmt: skip
        return weight, None, None
    node, found = originals[0]
    return node, found, "a parametrization (torch.nn.utils.parametrize)"


def _parametrization_state(node: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    """Whether a graph input holds a parametrization module's state (``….parametrizations.weight.0.base``)."""
    if node.op == "get_attr":
        return "parametrizations" in str(node.target)
    source = getattr(node.meta.get("grapharg"), "source", None)
    return source is not None and _module_state(node, gm) and "parametrizations" in source_name(source)


def _flag_shared_weights(sites: list[LinearSite]) -> None:
    """A weight that several modules share (tied) reaches the graph once, through whichever module Dynamo met first,
    so its name is that module's for every caller: options and policies written for the other would reach the wrong
    layer. Linears whose weight is called from two modules neither of which holds the other (the innermost entry of
    the node's module stack: a module's own forward and its parent's matmul over the module's weight are no tie)
    keep their label and stay dense with that reason, where options select layers by name."""
    callers: dict[torch.fx.Node, set] = {}
    for site in sites:
        stack = site.node.meta.get("nn_module_stack") or {}
        innermost = next(reversed(stack.values()), None)  # (the module's source, "L['self'].fc", its class)
        callers.setdefault(site.weight, set()).add(innermost[0] if innermost else None)  # None: the frame's own

    def nested(inner: str | None, outer: str | None) -> bool:
        return outer is None or inner == outer or (inner is not None and inner.startswith((outer + ".", outer + "[")))

    tied = {weight for weight, paths in callers.items()
            if any(not nested(a, b) and not nested(b, a) for a in paths for b in paths)}  # fmt: skip
    for site in sites:
        if site.weight in tied and site.name_problem is None:
            site.name_problem = (f"its weight is tied to another module's, and Dynamo names every use of it after "
                                 f"one of them ({site.name!r}): an option or a policy could reach the wrong "
                                 f"layer")  # fmt: skip
