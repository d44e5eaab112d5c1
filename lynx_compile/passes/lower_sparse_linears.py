"""Inductor post-grad pass: lower each `lynx::sparse_linear` into its sparse path's parts, so Inductor fuses them.

The Dynamo-level rewrite leaves one opaque node per sparsified linear, which keeps decisions visible and the graph
small through AOT. Opaque, though, it would run as an extern call with its GEMM and epilogue hidden from Inductor.
Here each node (and each sibling group's `lynx::sparse_linear_group`) is replaced by what its path's `lower` (or
`lower_group`) traces (`lynx_compile.paths`): for "simulate", `lynx::nm_prune` → mm → per-row scale → bias, Inductor
picking the GEMM and fusing the rest; for "cusparselt", `lynx::prune_compress_24` (applying x's folded producer as it
loads) → `aten._cslt_sparse_mm` (one per member of a group, on the one operand) → scale and bias, fused into the
consumer's pointwise kernel; on the CUTLASS paths the compressor is its one-pass kernel's launch, which Inductor
makes from its own code, wherever the graph proves the kernel reads x (`paths/lowered_compressors.py`). A LoRA
correction adds two small mms on the dense x to the same sum. A torchao float8 layer's `lynx::float8_sparse_linear`
(and group op) is lowered where its path runs kernel ops only (`SparsePath.lowers_float8`: the CUTLASS FP8 path's
compressor and GEMM), for the op's host cost per call.

A node whose token count is symbolic and not provably one its plan runs sparse (≥ min_tokens, a multiple of the
path's row multiple) keeps its run-time fallback and stays opaque. The pass is a `CustomGraphPass` whose uuid hashes
its own sources, every registered path's and fold's, the kernels and the lynx config, so Inductor's FX graph cache
never serves a graph lowered under other code or settings.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable

import torch
import torch.fx
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch._inductor.pattern_matcher import (
    CallFunction,
    KeywordArg,
    Match,
    PatternMatcherPass,
    register_graph_pattern,
)

from ..config import LynxConfig, content_key
from ..folds import FOLDS
from ..logs import log_graph
from ..method import token_rows
from ..ops import (
    FLOAT8_SPARSE_LINEAR_ARGS,
    FLOAT8_SPARSE_LINEAR_GROUP_ARGS,
    SPARSE_LINEAR_ARGS,
    SPARSE_LINEAR_GROUP_ARGS,
    float8_weight,
    member_bias_list,
)
from ..paths import PATHS, get_path
from ..plan import SparseLinearPlan
from .utils import fake_value

logger = logging.getLogger(__name__)

_PATTERNS = PatternMatcherPass(pass_name="lynx_lower_sparse_linears")
_PACKAGE = Path(__file__).resolve().parent.parent
# The shared machinery every lowering goes through; each path and fold adds its own files (`source_files`).
_CORE_FILES = ("passes/lower_sparse_linears.py", "ops.py", "plan.py", "method.py", "float8.py", "kernel_op.py",
               "folds/__init__.py", "folds/base.py", "paths/__init__.py", "paths/base.py")  # fmt: skip


def _replace(match: Match, lowered: Callable[..., object], args: list) -> None:
    """The matched op replaced by what `lowered` traces. Without the trace's dead-code elimination: a compressor's
    launch recorded for Inductor (`paths/lowered_compressors.py`) writes buffers it does not return, so FX would
    count it unused and drop it (Inductor's own pass that turns kernels into launches traces the same way)."""
    match.replace_by_example(lowered, args, run_functional_passes=False)


def _settled(match: Match) -> bool:
    """Lower only where the op's run-time fallback (too few tokens, off the path's multiple) provably never fires."""
    rows = token_rows(fake_value(match.kwargs["inputs"][0]))
    return SparseLinearPlan.decode(match.kwargs["plan"]).settled(rows)


@functools.cache
def _register_patterns() -> None:
    pattern = CallFunction(torch.ops.lynx.sparse_linear.default, *(KeywordArg(name) for name in SPARSE_LINEAR_ARGS))

    @register_graph_pattern(pattern, extra_check=_settled, pass_dict=_PATTERNS)
    def _lower(match: Match, inputs, weight, bias, lora_a, lora_b, plan):  # noqa: ANN001
        decoded = SparseLinearPlan.decode(plan)
        path = get_path(decoded.path)
        optional = [tensor for tensor in (bias, lora_a, lora_b) if tensor is not None]

        def lowered(weight, *given):
            rest = iter(given)
            bias_value = next(rest) if bias is not None else None
            lora = (next(rest), next(rest)) if lora_a is not None else None
            return path.lower(list(rest), weight, bias_value, lora, decoded)

        _replace(match, lowered, [weight, *optional, *inputs])

    group = CallFunction(torch.ops.lynx.sparse_linear_group.default,
                         *(KeywordArg(name) for name in SPARSE_LINEAR_GROUP_ARGS))  # fmt: skip

    @register_graph_pattern(group, extra_check=_settled, pass_dict=_PATTERNS)
    def _lower_group(match: Match, inputs, weights, biases, biased, plan):  # noqa: ANN001
        decoded = SparseLinearPlan.decode(plan)
        path = get_path(decoded.path)

        def lowered(*given):
            member_weights, bias_values = given[: len(weights)], given[len(weights) : len(weights) + len(biases)]
            member_biases = member_bias_list(len(weights), list(bias_values), biased)
            return path.lower_group(list(given[len(weights) + len(biases) :]), list(member_weights), member_biases,
                                    decoded)  # fmt: skip

        _replace(match, lowered, [*weights, *biases, *inputs])


def _settled_float8(match: Match) -> bool:
    """A float8 op is lowered where it is settled and its path runs kernel ops (`SparsePath.lowers_float8`)."""
    return get_path(SparseLinearPlan.decode(match.kwargs["plan"]).path).lowers_float8 and _settled(match)


@functools.cache
def _register_float8_patterns() -> None:
    """torchao float8 layers: the op's body (its path's kernel ops) in place of the op, for the host cost of a call."""
    pattern = CallFunction(torch.ops.lynx.float8_sparse_linear.default,
                           *(KeywordArg(name) for name in FLOAT8_SPARSE_LINEAR_ARGS))  # fmt: skip

    @register_graph_pattern(pattern, extra_check=_settled_float8, pass_dict=_PATTERNS)
    def _lower_float8(match: Match, inputs, weight, weight_scale, bias, plan):  # noqa: ANN001
        decoded = SparseLinearPlan.decode(plan)

        def lowered(weight, weight_scale, *given):
            bias_value, rest = (given[0], given[1:]) if bias is not None else (None, given)
            return get_path(decoded.path).lower(list(rest), float8_weight(weight, weight_scale), bias_value, None,
                                                decoded)  # fmt: skip

        _replace(match, lowered, [weight, weight_scale, *([bias] if bias is not None else []), *inputs])

    group = CallFunction(torch.ops.lynx.float8_sparse_linear_group.default,
                         *(KeywordArg(name) for name in FLOAT8_SPARSE_LINEAR_GROUP_ARGS))  # fmt: skip

    @register_graph_pattern(group, extra_check=_settled_float8, pass_dict=_PATTERNS)
    def _lower_float8_group(match: Match, inputs, weights, weight_scales, biases, biased, plan):  # noqa: ANN001
        decoded = SparseLinearPlan.decode(plan)
        members = len(weights)

        def lowered(*given):
            member_weights = [float8_weight(weight, scale) for weight, scale in zip(given[:members],
                                                                                   given[members : 2 * members])]
            bias_values = list(given[2 * members : 2 * members + len(biases)])
            return get_path(decoded.path).lower_group(list(given[2 * members + len(biases) :]), member_weights,
                                                      member_bias_list(members, bias_values, biased), decoded)

        _replace(match, lowered, [*weights, *weight_scales, *biases, *inputs])


def source_files() -> tuple[str, ...]:
    """Every file whose content changes what the lowering emits: the core, the kernels, each registered path and
    fold (so a new path or fold is covered without being listed here)."""
    files = {str(_PACKAGE / name) for name in _CORE_FILES}
    files.update(str(path) for path in (_PACKAGE / "kernels").glob("*.py"))
    for entry in (*PATHS.values(), *FOLDS.values()):
        files.update(str(Path(file).resolve()) for file in entry.source_files())
    return tuple(sorted(files))


class LowerSparseLinears(CustomGraphPass):
    """Installed per compile as Inductor's `post_grad_custom_post_pass` (never in global config), in place of the
    pass a user set there globally, which it runs after its own (`then`). `lowered` counts the nodes it lowered in
    the last graph it ran on (None until it runs: an FX graph cache hit skips it)."""

    def __init__(self, config: LynxConfig) -> None:
        self.config = config
        self.then: Callable[[torch.fx.Graph], object] | None = None  # the user's global pass, set by the backend
        self.lowered: int | None = None

    def __call__(self, graph: torch.fx.Graph) -> None:
        _register_patterns()
        _register_float8_patterns()
        log_graph("Inductor's post-grad graph, before lower_sparse_linears", graph)
        self.lowered = _PATTERNS.apply(graph)
        logger.debug("lynx: lowered %d lynx::sparse_linear nodes for Inductor", self.lowered)
        if self.lowered:
            log_graph("graph after lower_sparse_linears", graph)
        if self.then is not None:
            self.then(graph)

    def uuid(self) -> bytes:
        key = _hash_of(source_files()) + self.config.cache_key().encode()
        # the user's global pass keyed as one given in the options (a plain function: no graph served from the cache)
        return key + (content_key(self.then).encode() if self.then is not None else b"")


@functools.lru_cache(maxsize=None)
def _hash_of(files: tuple[str, ...]) -> bytes:
    """The files' content hash, once per process and set of files (Inductor asks for every graph it compiles)."""
    return get_hash_for_files(files)
