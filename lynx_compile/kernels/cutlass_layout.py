"""The compressed 2:4 operand of lynx's CUTLASS sparse GEMM (`csrc/sparse_gemm_sm90.cu`), as pure torch: the reference
the Triton compressor (`prune_compress_24_cutlass`) is tested against, and the layout's documentation.

CUTLASS 3.x's sm_90 sparse collective takes the activation X̃ (M × K, 2:4 along K, bf16/fp16) as two tensors:

- values: M × K/2 elements, row-major: the two stored entries of each group of 4, in index order (as cuSPARSELt's).
- metadata E: one nibble per group, ``lo | hi << 2`` for the two stored indices, in CUTLASS's reordered layout
  (`Sm90GemmSparseConfig::fill_layoutE`). For 16-bit elements and a kernel tile K of 64 its atom is 64 rows × 64
  columns of K, (8, 2, 4) × (16, 2, 2) in logical elements with strides (64, 16, 1024) × (1, 512, 32), one bit per
  logical element; atoms are stacked along M first (stride 4096), then along K (stride M' · 64, M' = M rounded up
  to 64). Per group g of row r (k = 4g), the nibble address is

      (g & 3) + ((r >> 3) & 1)·4 + ((g >> 3) & 1)·8 + (r & 7)·16 + ((g >> 2) & 1)·128 + ((r >> 4) & 3)·256
          + (r >> 6)·1024 + (g >> 4)·M'·16

  (even address: the byte's low nibble), so a byte holds groups 2j and 2j + 1 of one row. Rows M .. M' are empty
  groups. The layout depends on the kernel's tile K: every configuration lynx builds uses 64, so one operand serves
  them all. (`tests/kernels/test_cutlass_layout.py` checks this formula against the built library's own layout.)
- for 8-bit elements (FP8 e4m3, kernel tile K 128) the atom is plain: 64 rows × 128 columns, K-major, so the nibble
  address is ``(g & 31) + (r & 63)·32 + (r >> 6)·2048 + (g >> 5)·M'·32``.
- which indices are stored: the two members lynx's rank rule keeps, in index order, as they are — a kept zero
  (-0.0 too) in its own slot, so the operand decompresses to the pruned matrix bit for bit — and rows M .. M' are
  empty groups, (0, 0). CUTLASS's own compressor (`transform/kernel/sm90_sparse_gemm_compressor.hpp`), which sees
  only a pruned matrix, stores its nonzeros instead (-0.0 counts as zero): one at p < 3 → (p, 3), at 3 → (0, 3);
  none → (0, 0), a slot with no nonzero holding +0 (cuSPARSELt's rule differs for p = 3 and for empty groups).
  Both stand for the same matrix, and with finite weights give the GEMM the same product; lynx's compressors write
  the first, because placing the kept members where they are is cheaper than moving zeros out of them (≈ 3 of
  ≈ 24 instructions an element, `benchmarks/sass_per_element.py`). `compress_24_ref` writes either.
"""

from __future__ import annotations

import torch

from .grid import cdiv
from .nm_prune import nm_keep_mask_ref, norm_scale_ref
from .prune_compress_24 import check_compressible

META_ROWS = 64  # rows per metadata atom; the metadata of M rows covers M rounded up to it
TILE_K = {16: 64, 8: 128}  # the kernels' tile K per element width, which fixes the metadata atom's width
_INTEGER_VIEWS = {2: torch.int16, 1: torch.uint8}


def metadata_nibble_address(rows: torch.Tensor, groups: torch.Tensor, padded_rows: int,
                            element_bits: int = 16) -> torch.Tensor:  # fmt: skip
    """Nibble address of group `groups` of row `rows` (broadcasting int tensors), per the module docstring."""
    if element_bits == 8:
        return (groups & 31) + (rows & 63) * 32 + (rows >> 6) * 2048 + (groups >> 5) * (padded_rows * 32)
    return ((groups & 3) + ((rows >> 3) & 1) * 4 + ((groups >> 3) & 1) * 8 + (rows & 7) * 16
            + ((groups >> 2) & 1) * 128 + ((rows >> 4) & 3) * 256 + (rows >> 6) * 1024
            + (groups >> 4) * (padded_rows * 16))  # fmt: skip


def metadata_nibbles(metadata: torch.Tensor, rows: torch.Tensor, groups: torch.Tensor, padded_rows: int,
                     element_bits: int = 16) -> torch.Tensor:  # fmt: skip
    """The metadata nibbles (lo | hi << 2) of group `groups` of row `rows` (broadcasting int tensors)."""
    address = metadata_nibble_address(rows, groups, padded_rows, element_bits)
    return (metadata.int()[address >> 1] >> ((address & 1) * 4)) & 0xF


def _bits(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the elements' bit patterns as integers, which of them are nonzero: -0.0 is zero, NaN is not)."""
    bits = tensor.view(_INTEGER_VIEWS[tensor.element_size()])
    magnitude = bits.int() & ((1 << (8 * tensor.element_size() - 1)) - 1)
    return bits, magnitude != 0


def check_operand(pruned: torch.Tensor) -> None:
    if pruned.dim() != 2 or pruned.element_size() not in _INTEGER_VIEWS or not pruned.dtype.is_floating_point:
        raise ValueError(f"expected a 2-D 8- or 16-bit float matrix, got {tuple(pruned.shape)} {pruned.dtype}")
    if pruned.shape[1] % TILE_K[8 * pruned.element_size()]:
        raise ValueError(f"K={pruned.shape[1]} is not a multiple of {TILE_K[8 * pruned.element_size()]}")


def stored_indices_ref(nonzero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) stored indices of each group of 4 (last dim) by CUTLASS's compressor's rule, from which entries are
    nonzero; or by lynx's, from which two are kept (two a group: the same rule gives them in index order)."""
    count = nonzero.sum(-1)
    index = torch.arange(4, device=nonzero.device)
    first = torch.where(nonzero, index, 4).min(-1).values  # 4: none
    last = torch.where(nonzero, index, -1).max(-1).values  # -1: none
    lo = torch.where(count == 2, first, torch.where((count == 1) & (first < 3), first, 0))
    hi = torch.where(count == 2, last, torch.where(count == 1, 3, 0))
    return lo, hi


def compress_24_ref(pruned: torch.Tensor, kept: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, metadata bytes) of an already 2:4-pruned (M, K) matrix (bf16, fp16 or e4m3): with `kept` (M × K
    bool, two a group: the members the rank rule kept) as lynx's compressors write them, each kept member in its own
    slot whatever its value; without, as CUTLASS's compressor writes them, from the nonzeros (module docstring)."""
    check_operand(pruned)
    rows, k = pruned.shape
    bits, nonzero = _bits(pruned)
    if kept is not None:
        two_a_group = kept.shape == pruned.shape and bool((kept.reshape(rows, k // 4, 4).sum(-1) == 2).all())
        if kept.dtype != torch.bool or not two_a_group:
            raise ValueError("`kept` must be a bool mask marking two members of every group of 4 of the pruned matrix")
        nonzero = kept
    groups, nonzero = bits.reshape(rows, k // 4, 4), nonzero.reshape(rows, k // 4, 4)
    lo, hi = stored_indices_ref(nonzero)
    slots = [torch.where(nonzero.gather(-1, i[..., None]), groups.gather(-1, i[..., None]), 0) for i in (lo, hi)]
    values = torch.cat(slots, dim=-1).reshape(rows, k // 2).view(pruned.dtype)  # a free slot: +0

    padded = cdiv(rows, META_ROWS) * META_ROWS
    nibbles = torch.zeros(padded * k // 4, dtype=torch.int32, device=pruned.device)  # empty: (0, 0)
    address = metadata_nibble_address(torch.arange(rows, device=pruned.device)[:, None],
                                      torch.arange(k // 4, device=pruned.device)[None, :], padded,
                                      8 * pruned.element_size())  # fmt: skip
    nibbles[address.flatten()] = (lo | hi << 2).flatten().int()
    metadata = (nibbles[0::2] | nibbles[1::2] << 4).to(torch.uint8)
    return values, metadata


def decompress_24_ref(values: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
    """Inverse of `compress_24_ref`: the dense (M, K) matrix the two tensors stand for."""
    rows, k = values.shape[0], values.shape[1] * 2
    padded = cdiv(rows, META_ROWS) * META_ROWS
    nibble = metadata_nibbles(metadata, torch.arange(rows, device=values.device)[:, None],
                              torch.arange(k // 4, device=values.device)[None, :], padded,
                              8 * values.element_size())  # fmt: skip
    pairs = values.view(_INTEGER_VIEWS[values.element_size()]).reshape(rows, k // 4, 2)
    dense = torch.zeros(rows, k // 4, 4, dtype=pairs.dtype, device=values.device)
    # (0, 0) (an empty group) writes slot 1 over slot 0 at index 0: both are zeros
    dense.scatter_(-1, (nibble & 3)[..., None].long(), pairs[..., :1])
    dense.scatter_(-1, (nibble >> 2)[..., None].long(), pairs[..., 1:])
    return dense.reshape(rows, k).view(values.dtype)


def prune_compress_24_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2:4 prune (lynx's rank rule) and compress to CUTLASS's layout, with the rows' norm scale s."""
    check_compressible(x)
    kept = nm_keep_mask_ref(x, 2, 4)
    values, metadata = compress_24_ref(torch.where(kept, x, 0), kept)
    return values, metadata, norm_scale_ref(x, kept)


def sparse_mm_ref(values: torch.Tensor, metadata: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                  bias: torch.Tensor | None, weight_scale: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """What the CUTLASS kernel computes: s ⊙ (X̃·Wᵀ) ⊙ w + b in fp32 from the compressed operand, rounded once to
    the output dtype (W's; bf16 for FP8). s, w and b are optional."""
    out = decompress_24_ref(values, metadata).float() @ weight.float().t()
    if weight_scale is not None:
        out = out * weight_scale.float()
    if scale is not None:
        out = out * scale.float()[:, None]
    if bias is not None:
        out = out + bias.float()
    return out.to(torch.bfloat16 if weight.element_size() == 1 else weight.dtype)
