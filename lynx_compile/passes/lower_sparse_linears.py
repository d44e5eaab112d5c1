"""Inductor post-grad pass: lower each `lynx::sparse_linear` into its parts, so Inductor fuses the epilogue.

The Dynamo-level rewrite leaves one opaque node per sparsified linear, which keeps decisions visible and the graph
small through AOT. Opaque, though, it would run as an extern call with its GEMM and epilogue hidden from Inductor.
Lowered here, by the node's path:
- "simulate": `lynx::nm_prune` → mm → per-row scale → bias; Inductor picks the GEMM and fuses scale and bias;
- "cusparselt": `lynx::prune_compress_24` (applying x's folded producers as it loads) → `aten._cslt_sparse_mm`
  (the algorithm chosen at decision time) → bias, which Inductor fuses into the consumer's pointwise kernel.
A LoRA correction adds two small mms on the dense x, summed in the same fused pointwise pass.

A node whose token count is symbolic and not provably ≥ min_tokens (or a multiple of 16, for cuSPARSELt) keeps its
run-time fallback and is left opaque. The pass is a `CustomGraphPass` whose uuid hashes this file, the op
definitions, the kernels and the lynx config, so Inductor's FX graph cache never serves a graph lowered under other
settings.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

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
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .. import ops
from ..config import LynxConfig

logger = logging.getLogger(__name__)

_PATTERNS = PatternMatcherPass(pass_name="lynx_lower_sparse_linears")
_ARG_NAMES = ("inputs", "activations", "weight", "bias", "lora_a", "lora_b", "n", "m", "norm_compensation",
              "min_tokens", "path", "algorithm")  # fmt: skip


def _run_time_checks_are_settled(match: Match) -> bool:
    """Lower only where the op's run-time fallbacks (too few tokens; M % 16 for cuSPARSELt) provably never fire."""
    x = match.kwargs["inputs"][0].meta["val"]
    tokens = math.prod(x.shape[:-1])
    if not statically_known_true(tokens >= match.kwargs["min_tokens"]):
        return False
    return match.kwargs["path"] != "cusparselt" or bool(statically_known_true(tokens % 16 == 0))


@functools.cache
def _register_patterns() -> None:
    pattern = CallFunction(torch.ops.lynx.sparse_linear.default, *(KeywordArg(name) for name in _ARG_NAMES))

    @register_graph_pattern(pattern, extra_check=_run_time_checks_are_settled, pass_dict=_PATTERNS)
    def _lower(match: Match, inputs, activations, weight, bias, lora_a, lora_b, n, m, norm_compensation, min_tokens,
               path, algorithm):  # fmt: skip
        optional = [tensor for tensor in (bias, lora_a, lora_b) if tensor is not None]

        def lowered(weight, *given):
            rest = iter(given)
            bias_value = next(rest) if bias is not None else None
            lora = (next(rest), next(rest)) if lora_a is not None else None
            pieces = list(rest)
            if path == "cusparselt":
                compress = torch.ops.lynx.prune_compress_24.default
                return ops.cusparselt_linear(pieces, activations, weight, bias_value, algorithm, compress, lora)
            return ops.simulated_sparse_linear(ops.assemble(pieces, activations), weight, bias_value, n, m,
                                               norm_compensation, torch.ops.lynx.nm_prune.default, lora)  # fmt: skip

        match.replace_by_example(lowered, [weight, *optional, *inputs])


class LowerSparseLinears(CustomGraphPass):
    """Installed per compile as Inductor's `post_grad_custom_post_pass` (never in global config)."""

    def __init__(self, config: LynxConfig) -> None:
        self.config = config
        self.lowered = 0

    def __call__(self, graph: torch.fx.Graph) -> None:
        _register_patterns()
        self.lowered = _PATTERNS.apply(graph)
        logger.debug("lynx: lowered %d lynx::sparse_linear nodes for Inductor", self.lowered)

    def uuid(self) -> bytes:
        package = Path(__file__).resolve().parent.parent
        files = (Path(__file__), package / "ops.py", package / "kernels" / "nm_prune.py",
                 package / "kernels" / "prune_compress_24.py", package / "kernels" / "activations.py")  # fmt: skip
        return get_hash_for_files(tuple(str(f) for f in files)) + self.config.cache_key().encode()
