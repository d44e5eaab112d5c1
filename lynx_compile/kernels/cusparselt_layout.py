"""cuSPARSELt's compressed 2:4 operand on sm_90, as pure torch: the reference the Triton compressor
(`prune_compress_24`) is tested against (bit-exact with `torch._cslt_compress` on the GPU), and the layout's
documentation. Found by experiment on an H100 (`benchmarks/probe_cslt_layout.py`; notes in `CSLT_LAYOUT_SM90.md`
beside this file), for bf16/fp16 X of shape (M, K), K % 64 == 0:

- values: M × K/2 elements, row-major; each group of 4 contributes its two stored entries in index order.
- metadata, right after: one nibble per group, ``lo | hi << 2`` for the two stored indices lo < hi. A group
  (row r, group g) lives at nibble address

      (r // 64 · K/32 + g // 8) · 512 + (r & 7)·16 + ((r >> 3) & 1) + ((r >> 4) & 3)·128 + (g & 3)·4 + ((g >> 2) & 1)·2

  (even address: low nibble of byte address // 2). Rows are padded to a multiple of 64 with empty groups. For
  K % 64 == 32 cuSPARSELt pads K as well, differently: not implemented, such layers stay dense.
- the tensor torch returns is (M, ceil(total / M)) elements of X's dtype; the slack at the end is never read.
- which indices are stored is decided by the pruned values' nonzeros, not by the mask: a group with two nonzeros
  stores them; with fewer, the missing slots are the highest unused indices (one nonzero at p → (p, 3), or (2, 3)
  when p = 3; none → (2, 3)). So a kept exact zero is stored like a pruned one, as cuSPARSELt does.
"""

from __future__ import annotations

import torch

from .nm_prune import nm_prune_ref
from .prune_compress_24 import K_TILE, M_TILE, check_compressible, metadata_bytes

EMPTY_GROUP = 0xE  # nibble of a group with no nonzeros: stored indices (2, 3)


def metadata_nibble_address(rows: torch.Tensor, groups: torch.Tensor, k: int) -> torch.Tensor:
    """Nibble address of group `groups` of row `rows` (broadcasting int tensors), per the module docstring."""
    tile = (rows // M_TILE) * (k // K_TILE) + groups // 8
    in_tile = ((rows & 7) * 16 + ((rows >> 3) & 1) + ((rows >> 4) & 3) * 128 + (groups & 3) * 4
               + ((groups >> 2) & 1) * 2)  # fmt: skip
    return tile * 512 + in_tile


def stored_indices_ref(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) stored indices of each group of 4 (last dim) of a pruned tensor: nonzeros first, then high indices."""
    index = torch.arange(4, device=groups.device)
    preference = (groups != 0).int() * 4 + index  # a nonzero beats any zero; among equals the higher index wins
    chosen = preference.topk(2, dim=-1).indices
    return chosen.min(-1).values, chosen.max(-1).values


def compress_24_ref(pruned: torch.Tensor) -> torch.Tensor:
    """Encode an already 2:4-pruned (M, K) matrix exactly as `torch._cslt_compress` does on sm_90 (flat buffer)."""
    check_compressible(pruned)
    rows, k = pruned.shape
    groups = pruned.reshape(rows, k // 4, 4)
    lo, hi = stored_indices_ref(groups)
    values = torch.stack([groups.gather(-1, lo[..., None]), groups.gather(-1, hi[..., None])], dim=-1)

    nibbles = torch.full((2 * metadata_bytes(rows, k),), EMPTY_GROUP, dtype=torch.int32, device=pruned.device)
    row_index = torch.arange(rows, device=pruned.device)[:, None]
    group_index = torch.arange(k // 4, device=pruned.device)[None, :]
    nibbles[metadata_nibble_address(row_index, group_index, k).flatten()] = (lo | hi << 2).flatten().int()
    metadata = (nibbles[0::2] | nibbles[1::2] << 4).to(torch.uint8)
    return torch.cat([values.reshape(-1).view(torch.uint8), metadata]).view(pruned.dtype)


def decompress_24_ref(buffer: torch.Tensor, rows: int, k: int) -> torch.Tensor:
    """Inverse of `compress_24_ref`: the dense (M, K) matrix a compressed buffer stands for."""
    raw = buffer.view(torch.uint8)
    values_bytes = rows * k  # M·K/2 elements of 2 bytes
    values = raw[:values_bytes].view(buffer.dtype).reshape(rows, k // 4, 2)
    metadata = raw[values_bytes:].int()
    address = metadata_nibble_address(torch.arange(rows)[:, None], torch.arange(k // 4)[None, :], k).to(raw.device)
    nibble = (metadata[address >> 1] >> ((address & 1) * 4)) & 0xF
    dense = torch.zeros(rows, k // 4, 4, dtype=buffer.dtype, device=raw.device)
    dense.scatter_(-1, (nibble & 3)[..., None].long(), values[..., :1])
    dense.scatter_(-1, (nibble >> 2)[..., None].long(), values[..., 1:])
    return dense.reshape(rows, k)


def prune_compress_24_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2:4 prune (lynx's rank rule) and compress, with the row's norm scale s: what the fused kernel computes."""
    check_compressible(x)
    pruned, scale = nm_prune_ref(x, 2, 4)
    return compress_24_ref(pruned), scale
