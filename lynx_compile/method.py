"""The method in eager torch, once: what a sparsified linear computes, for the simulate path, `calibrate`, the LoRA
fit and every fallback alike (the tests keep copies of their own on purpose, written independently).

Per token row x of X (tokens × K): keep the n largest |x| of every m consecutive channels (`kernels/nm_prune.py`,
ties to the lower index), giving x̃; with norm compensation scale by s = ‖x‖ / ‖x̃‖, applied after the GEMM because
(s·x̃)·Wᵀ = s·(x̃·Wᵀ); add the bias and, where calibrated, the low-rank correction (x·Bᵀ)·Aᵀ of the dense x.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch

from .checks import OptionError, check_bool, check_int
from .kernels.nm_prune import check_nm, nm_prune_ref

Lora = Optional[tuple[torch.Tensor, torch.Tensor]]  # (lora_a (N, r), lora_b (r, K))
PruneFn = Callable[[torch.Tensor, int, int], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class Method:
    """The method's settings: n:m along K, norm compensation, and the token count below which a layer runs dense."""

    n: int = 2
    m: int = 4
    norm_compensation: bool = True
    min_tokens: int = 16

    def __post_init__(self) -> None:
        check_int("n", self.n)
        check_int("m", self.m)
        try:
            check_nm(self.n, self.m)
        except ValueError as error:
            raise OptionError(f"lynx options 'n', 'm': {error}") from None
        check_bool("norm_compensation", self.norm_compensation)
        check_int("min_tokens", self.min_tokens, 0)

    def prunes(self, rows: int, in_features: int) -> bool:
        """Whether a layer called on `rows` token rows is pruned at all (below min_tokens it runs dense)."""
        return rows >= self.min_tokens and in_features % self.m == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sparse_linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    method: Method,
    lora: Lora = None,
    prune: PruneFn = nm_prune_ref,
) -> torch.Tensor:
    """y = s ⊙ (x̃·Wᵀ) + b [+ (x·Bᵀ)·Aᵀ], x of any leading shape; `prune` is the reference or the kernel's op."""
    rows = x.reshape(-1, weight.shape[1])
    pruned, scale = prune(rows, method.n, method.m)
    out = torch.mm(pruned, weight.t())
    scale = scale if method.norm_compensation else None
    return epilogue(out, scale, bias, lora, rows).reshape(*x.shape[:-1], weight.shape[0])


def epilogue(out: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None, lora: Lora,
             rows: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """s ⊙ out + b [+ (x·Bᵀ)·Aᵀ] after the GEMM (`scale` None: no norm compensation), in fp32 and rounded once, as
    the CUTLASS kernel's epilogue and Inductor's one fused pass over Y (or the consumer's kernel) compute it. Rounded
    after each step, the eager reference differed from the compiled model by a rounding wherever bias and output
    cancel, enough to flip near-tied masks in the next layer. The correction's two small GEMMs read the dense rows;
    the result has the type the sum promotes to, as `out + bias` would."""
    dtype, accumulate = out.dtype, torch.promote_types(out.dtype, torch.float32)
    result = out.to(accumulate)
    if scale is not None:
        result = result * scale.unsqueeze(1)
    if bias is not None:
        dtype = torch.promote_types(dtype, bias.dtype)
        result = result + bias.to(accumulate)
    if lora is not None:
        lora_a, lora_b = lora
        correction = torch.mm(torch.mm(rows, lora_b.t()), lora_a.t())
        dtype = torch.promote_types(dtype, correction.dtype)
        result = result + correction.to(accumulate)
    return result.to(dtype)


def pruning_residual(rows: torch.Tensor, method: Method) -> torch.Tensor:
    """d = x − s·x̃ (or x − x̃) in fp64: what pruning takes from each token row (the LoRA fit's target)."""
    pruned, scale = nm_prune_ref(rows, method.n, method.m)
    kept = pruned.double() * scale.double()[:, None] if method.norm_compensation else pruned.double()
    return rows.double() - kept


def cast_like_autocast(value: object, device_type: str, dtype: torch.dtype) -> object:
    """`value` (a tensor, or a list or tuple of them) as autocast casts a lower-precision op's operands: floating
    point tensors on the autocast device, fp64 excepted, to `dtype`; the rest as they are."""
    if isinstance(value, torch.Tensor):
        eligible = value.is_floating_point() and value.device.type == device_type and value.dtype != torch.float64
        return value.to(dtype) if eligible else value
    if isinstance(value, (list, tuple)):
        return type(value)(cast_like_autocast(item, device_type, dtype) for item in value)
    return value


def token_rows(x: torch.Tensor) -> int:
    """Token rows of an activation (tokens × K, any leading shape)."""
    return math.prod(x.shape[:-1])
