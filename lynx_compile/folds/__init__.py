"""Producer folds, as a registry: which producers of a sparsified linear's input the op absorbs.

`match_producer(x)` asks each registered fold's matcher in turn; the rewrite then hands the op the fold's inputs and
its `FoldSpec`, and every consumer — the op's reference and backward, the compressor's loader, the fake shapes, the
speed rule — asks `get_fold(spec.kind)`. Adding a fold is one module beside these (a `ProducerFold` subclass: see
`base.py`) plus one `register_fold` line below.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.fx

from ..kernels import prune_compress_24_single_pass as compress_single_pass
from ..kernels.prune_compress_24 import (
    Loader,
    check_compressible_width,
    check_operands,
    cutlass_operand,
    prune_compress_24,
    prune_compress_24_cutlass,
    written_out,
)
from ..kernels.prune_quantize_fp8 import prune_quantize_compress_fp8, quantize_rows_fp8
from ..registry import Registry
from .activation import Activation
from .base import IDENTITY, Derived, FoldMatch, FoldSpec, ProducerFold
from .concat import Concat
from .gated import Gated
from .identity import Identity
from .norm import Norm
from .writes import write_past_the_fold

logger = logging.getLogger(__name__)

FOLDS: Registry[ProducerFold] = Registry("producer fold")


def register_fold(fold: ProducerFold) -> ProducerFold:
    return FOLDS.register(fold.kind, fold)


def get_fold(kind: str) -> ProducerFold:
    return FOLDS[kind]


def match_producer(x: torch.fx.Node) -> FoldMatch | None:
    """The first registered fold whose matcher takes x's producer and whose op would take what it found (the fold's
    `check` on the inputs' fake tensors: a matcher's slip leaves x as it is, rather than failing in the compiled
    model), unless something writes in place to what the producer reads before the linear runs (`writes.py`); None
    leaves x as it is."""
    for fold in FOLDS.values():
        found = fold.match(x)
        if found is None:
            continue
        try:
            fold.check(found.values(), found.spec.params)
        except ValueError as error:
            logger.debug("lynx: %s's producer not folded: %s", x, error)
            continue
        writer = write_past_the_fold(found, x)
        if writer is not None:
            logger.debug("lynx: %s's producer not folded: %s writes in place to what it reads before the linear",
                         x, writer)  # fmt: skip
            continue
        return found
    return None


def describe(spec: FoldSpec) -> str:
    """The fold as reasons and reports name it: `gelu_tanh`, `cat(none, gelu_tanh)`."""
    return get_fold(spec.kind).describe(spec.params)


def assemble(inputs: Sequence[torch.Tensor], spec: FoldSpec) -> torch.Tensor:
    """x, made from the op's inputs by the fold's torch reference."""
    fold = get_fold(spec.kind)
    fold.check(inputs, spec.params)
    return fold.reference(inputs, spec.params)


def compress(
    inputs: Sequence[torch.Tensor], spec: FoldSpec, pad_rows_to: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The compressor on x = assemble(inputs, spec), made on load: (x̃'s operand, its rows padded with zeros to a
    multiple of `pad_rows_to`; the rows' norm scale)."""
    return prune_compress_24(*loading(inputs, spec), pad_rows_to)


def compress_cutlass(
    inputs: Sequence[torch.Tensor], spec: FoldSpec, single_pass: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The compressor on x = assemble(inputs, spec), made on load, in the CUTLASS GEMM's layout: (values,
    metadata, the rows' norm scale). `single_pass`: None takes the one-launch kernel where it applies
    (`prune_compress_24_single_pass.applies`), True insists on it (an error where it cannot read x), False takes
    the general kernel."""
    operands, loader = loading(inputs, spec)
    fits = single_pass is not False and compress_single_pass.applies(operands, loader)
    if single_pass and not fits:
        raise ValueError(f"the single-pass compressor cannot read these inputs for {describe(spec)}: 16-bit, "
                         "contiguous along K, at most two pieces through one activation, or through two where "
                         "the head is whole chunks")  # fmt: skip
    if not fits:
        return prune_compress_24_cutlass(operands, loader)
    check_operands(operands, loader.aligned)
    check_compressible_width(operands[0].dtype, loader.width)
    rows, k = operands[0].shape[0], loader.width
    values, metadata = cutlass_operand(rows, k, operands[0].dtype, operands[0].device)
    return values, metadata, compress_single_pass.launch(operands, loader, values, metadata)


def compress_fp8(
    inputs: Sequence[torch.Tensor], spec: FoldSpec, norm_compensation: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The FP8 compressor on x = assemble(inputs, spec), made on load: (e4m3 values, metadata, the row scale: the
    pruned rows' quantization scale, times their norm scale with `norm_compensation`)."""
    return prune_quantize_compress_fp8(*loading(inputs, spec), norm_compensation)


def quantize_fp8(inputs: Sequence[torch.Tensor], spec: FoldSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """x = assemble(inputs, spec), made on load, quantized to e4m3 per row: (rows, their scales)."""
    return quantize_rows_fp8(*loading(inputs, spec))


def load(inputs: Sequence[torch.Tensor], spec: FoldSpec) -> torch.Tensor:
    """x as the compressor makes it from `inputs` on load, written out (rows × K): for tests of a fold's loader, and
    as the producer's own kernel where the speed rule times a producer written out first (`Workload.written`)."""
    return written_out(*loading(inputs, spec))


def loading(inputs: Sequence[torch.Tensor], spec: FoldSpec) -> tuple[list[torch.Tensor], Loader]:
    """The inputs as 2-D token rows, and the fold's loader of x over them."""
    fold = get_fold(spec.kind)
    fold.check(inputs, spec.params)
    rows = [tensor.reshape(-1, tensor.shape[-1]) for tensor in inputs]
    return rows, fold.loader(rows, spec.params)


register_fold(Identity())
register_fold(Concat())
register_fold(Activation())
register_fold(Gated())
register_fold(Norm())

__all__ = ["FOLDS", "IDENTITY", "Derived", "FoldMatch", "FoldSpec", "ProducerFold", "assemble", "compress",
           "compress_cutlass", "compress_fp8", "describe", "get_fold", "load", "loading", "match_producer",
           "quantize_fp8", "register_fold"]  # fmt: skip
