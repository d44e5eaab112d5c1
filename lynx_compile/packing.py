"""A sibling group's weights as one matrix, without a second copy: the members' parameters re-pointed as
consecutive row blocks of one buffer.

A group (q, k, v; FLUX's single-block q, k, v and MLP-in) runs best as one GEMM over the concatenated weights: one
3072 → 21504 GEMM is faster on sparse tensor cores than four narrow ones. Concatenating at run time would copy the
weights on every call, and a concatenated copy made once would double their memory and go stale when a weight
changes. So `pack_rows` moves each member's values into one buffer, once, and points the parameter at its rows
(`param.data = buffer[a:b]`): the parameters stay the model's own objects, with the same values, shapes and
gradients; `state_dict`, safetensors and `torch.save` still see separate tensors (non-overlapping views); an
in-place change to a weight (`weight.copy_(...)`, a LoRA fused in place) lands in the buffer, so the compiled model
runs it. At run time `adjacent_rows` checks that the weights it is handed still form that matrix; where they do
not (a parameter replaced after compiling, say), the caller concatenates them for that call — slower, never stale.
"""

from __future__ import annotations

from typing import Sequence

import torch


def adjacent_rows(weights: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The (ΣN, K) matrix `weights` form when they are consecutive row blocks of one contiguous buffer, in order;
    None otherwise."""
    first = weights[0]
    k = first.shape[-1]
    offset = first.storage_offset()
    storage = first.untyped_storage().data_ptr()
    for weight in weights:
        if (weight.dim() != 2 or weight.shape[1] != k or not weight.is_contiguous() or weight.dtype != first.dtype
                or weight.device != first.device or weight.untyped_storage().data_ptr() != storage
                or weight.storage_offset() != offset):  # fmt: skip
            return None
        offset += weight.numel()
    if first.is_inference() and not torch.is_inference_mode_enabled():
        return None  # a view of an inference tensor cannot be made outside inference mode
    rows = sum(weight.shape[0] for weight in weights)
    return first.detach().as_strided((rows, k), (k, 1), first.storage_offset())


def pack_rows(params: Sequence[torch.Tensor]) -> str | None:
    """Re-point `params` as consecutive row blocks of one new buffer, values unchanged (already so: nothing to do).
    None when they are packed; otherwise why they cannot be, and they are left as they were."""
    first = params[0]
    if any(type(param) not in (torch.nn.Parameter, torch.Tensor) for param in params):
        return "a weight is a tensor subclass"  # quantized, DTensor, ...: its storage is not ours to move
    if any(param.dim() != 2 or param.shape[1] != first.shape[1] or param.dtype != first.dtype
           or param.device != first.device for param in params):  # fmt: skip
        return "the weights differ in K, dtype or device"
    if any(param.is_inference() for param in params):
        return "inference tensors cannot be re-pointed"
    if adjacent_rows(params) is not None:
        return None
    if any(param.untyped_storage().nbytes() != param.numel() * param.element_size() for param in params):
        return "a weight shares its storage with other tensors"  # FSDP's flat parameter, a tied weight: not ours
    with torch.no_grad():
        buffer = torch.cat([param.detach() for param in params])
        for param, rows in zip(params, buffer.split([param.shape[0] for param in params])):
            param.data = rows
    return None
