"""Fused 2:4 prune + compress: X (tokens × K) → cuSPARSELt's compressed operand for sm_90, plus the norm scale.

The sparse GEMM (`torch._cslt_sparse_mm`) wants its 2:4 operand as one buffer in cuSPARSELt's own layout, which torch
only produces from an already-pruned dense matrix (`torch._cslt_compress`, a second pass over X). This kernel reads X
once and writes that buffer directly. The layout, found by experiment on an H100 (`benchmarks/probe_cslt_layout.py`;
notes in `CSLT_LAYOUT_SM90.md` beside this file), for bf16/fp16 X of shape (M, K), K % 64 == 0:

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

Only that sm_90 layout is implemented: `layout_supported()` says whether this GPU has it; elsewhere callers stay dense.
"""

from __future__ import annotations

import torch

from .nm_prune import NORM_EPS, nm_prune_ref

try:
    import triton
    import triton.language as tl

    from .nm_prune import keep_top_magnitudes
except ImportError:
    triton = None

COMPRESSED_DTYPES = (torch.float16, torch.bfloat16)
K_TILE = 32  # K elements per metadata tile
K_MULTIPLE = 64  # K % 64 == 32 is padded by cuSPARSELt in a way not implemented here
M_TILE = 64  # rows per metadata tile; M is padded to it
EMPTY_GROUP = 0xE  # nibble of a group with no nonzeros: stored indices (2, 3)


def layout_supported(device: torch.device | None = None) -> bool:
    """True on GPUs whose cuSPARSELt layout this module writes (sm_90: H100, H200)."""
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) == (9, 0)


def check_compressible(x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D activation (tokens, K), got shape {tuple(x.shape)}")
    if x.dtype not in COMPRESSED_DTYPES:
        raise ValueError(f"the compressed layout is implemented for {COMPRESSED_DTYPES}, got {x.dtype}")
    if x.shape[1] % K_MULTIPLE:
        raise ValueError(f"K={x.shape[1]} is not a multiple of {K_MULTIPLE}")


def metadata_bytes(rows: int, k: int) -> int:
    return -(-rows // M_TILE) * M_TILE * k // 8


def compressed_numel(rows: int, k: int) -> int:
    """Elements (of X's dtype) in the compressed buffer: values, then metadata bytes."""
    return rows * k // 2 + metadata_bytes(rows, k) // 2


def compressed_shape(rows: int, k: int) -> tuple[int, int]:
    """The shape `torch._cslt_compress` gives its result, which `torch._cslt_sparse_mm` expects back."""
    return rows, -(-compressed_numel(rows, k) // rows)


def metadata_nibble_address(rows: torch.Tensor, groups: torch.Tensor, k: int) -> torch.Tensor:
    """Nibble address of group `groups` of row `rows` (broadcasting int tensors), per the module docstring."""
    tile = (rows // M_TILE) * (k // K_TILE) + groups // 8
    in_tile = ((rows & 7) * 16 + ((rows >> 3) & 1) + ((rows >> 4) & 3) * 128 + (groups & 3) * 4
               + ((groups >> 2) & 1) * 2)  # fmt: skip
    return tile * 512 + in_tile


# ---- PyTorch reference -------------------------------------------------------------------------------------------


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
    """2:4 prune (lynx's rank rule) then compress: what the fused kernel must reproduce bit for bit."""
    check_compressible(x)
    pruned, scale = nm_prune_ref(x, 2, 4)
    return compress_24_ref(pruned), scale


# ---- Triton kernel -----------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _select_and_encode(x, member, N_KEEP: tl.constexpr):
        """For a [rows, groups, 4] tile: (lo value bits, hi value bits, nibble, kept fp32) of the compressed encoding.

        Everything is decided on the exact fp32 upcast and the values are moved as raw 16-bit patterns, so -0.0
        and NaN payloads survive, and no arithmetic touches bf16 (whose emulation in the interpreter is unreliable).
        """
        xf = x.to(tl.float32)
        keep = keep_top_magnitudes(xf, N_KEEP, 4)
        # Stored slots follow the pruned nonzeros, then the highest free indices (see the module docstring).
        preference = (keep & (xf != 0.0)).to(tl.int32) * 4 + member
        rank = tl.zeros(preference.shape, dtype=tl.int32)
        for i in tl.static_range(4):
            pref_i = tl.sum(tl.where(member == i, preference, 0), axis=2)[:, :, None]
            rank += (pref_i > preference).to(tl.int32)
        stored = rank < 2
        lo = tl.min(tl.where(stored, member, 4), axis=2)
        hi = tl.max(tl.where(stored, member, -1), axis=2)
        bits = tl.where(keep, x.to(tl.int16, bitcast=True).to(tl.int32), 0)
        lo_bits = tl.sum(tl.where(member == lo[:, :, None], bits, 0), axis=2)
        hi_bits = tl.sum(tl.where(member == hi[:, :, None], bits, 0), axis=2)
        return lo_bits, hi_bits, lo | (hi << 2), tl.where(keep, xf, 0.0)

    @triton.jit
    def _store_norm_scale(scale_ptr, rows, total, kept, M, eps):
        scale = tl.sqrt(total / (kept + eps))
        scale = tl.where(total - total == 0.0, scale, 1.0)  # non-finite rows get 1, as in nm_prune
        tl.store(scale_ptr + rows, scale, mask=rows < M)

    @triton.jit
    def _prune_compress_24_kernel(
        # pointers: values and metadata are two views of one output buffer
        x_ptr, values_ptr, meta_ptr, scale_ptr,
        # sizes and strides
        M, K, stride_xm, stride_xk,
        eps,
        # meta-parameters
        BLOCK_G: tl.constexpr,
    ):  # fmt: skip
        # A program owns 16 rows: rows r and r + 8 share each metadata byte (low and high nibble), so it handles
        # them as two halves of 8 rows and writes whole bytes. The grid covers M rounded up to 64: the padding
        # rows load as zeros and come out as empty groups, as cuSPARSELt writes them.
        row0 = tl.program_id(0) * 16
        half = tl.arange(0, 8)
        rows_lo = row0 + half
        rows_hi = rows_lo + 8
        member = tl.arange(0, 4)[None, None, :]
        n_groups = K // 4
        total_lo = tl.zeros([8], dtype=tl.float32)
        kept_lo = tl.zeros([8], dtype=tl.float32)
        total_hi = tl.zeros([8], dtype=tl.float32)
        kept_hi = tl.zeros([8], dtype=tl.float32)
        for g0 in range(0, n_groups, BLOCK_G):
            groups = g0 + tl.arange(0, BLOCK_G)
            group_ok = groups[None, :] < n_groups
            cols = groups[None, :, None] * 4 + member
            mask_lo = (rows_lo[:, None, None] < M) & group_ok[:, :, None]
            mask_hi = (rows_hi[:, None, None] < M) & group_ok[:, :, None]
            x_lo = tl.load(x_ptr + rows_lo[:, None, None] * stride_xm + cols * stride_xk, mask=mask_lo, other=0.0)
            x_hi = tl.load(x_ptr + rows_hi[:, None, None] * stride_xm + cols * stride_xk, mask=mask_hi, other=0.0)
            a_lo, a_hi, nibble_lo, kept_f_lo = _select_and_encode(x_lo, member, 2)
            b_lo, b_hi, nibble_hi, kept_f_hi = _select_and_encode(x_hi, member, 2)

            # values: row-major (M, K/2), two entries a group
            out_lo = values_ptr + rows_lo[:, None] * (K // 2) + groups[None, :] * 2
            out_hi = values_ptr + rows_hi[:, None] * (K // 2) + groups[None, :] * 2
            store_lo = (rows_lo[:, None] < M) & group_ok
            store_hi = (rows_hi[:, None] < M) & group_ok
            tl.store(out_lo, a_lo.to(tl.int16), mask=store_lo)
            tl.store(out_lo + 1, a_hi.to(tl.int16), mask=store_lo)
            tl.store(out_hi, b_lo.to(tl.int16), mask=store_hi)
            tl.store(out_hi + 1, b_hi.to(tl.int16), mask=store_hi)

            # metadata: the byte holding rows r (low nibble) and r + 8 (high nibble)
            r = rows_lo[:, None]
            g = groups[None, :]
            tile = (r // 64) * (K // 32) + g // 8
            address = tile * 512 + (r & 7) * 16 + ((r >> 4) & 3) * 128 + (g & 3) * 4 + ((g >> 2) & 1) * 2
            tl.store(meta_ptr + address // 2, (nibble_lo | (nibble_hi << 4)).to(tl.uint8), mask=group_ok)

            xf_lo = x_lo.to(tl.float32)
            xf_hi = x_hi.to(tl.float32)
            total_lo += tl.sum(tl.sum(xf_lo * xf_lo, axis=2), axis=1)
            total_hi += tl.sum(tl.sum(xf_hi * xf_hi, axis=2), axis=1)
            kept_lo += tl.sum(tl.sum(kept_f_lo * kept_f_lo, axis=2), axis=1)
            kept_hi += tl.sum(tl.sum(kept_f_hi * kept_f_hi, axis=2), axis=1)

        _store_norm_scale(scale_ptr, rows_lo, total_lo, kept_lo, M, eps)
        _store_norm_scale(scale_ptr, rows_hi, total_hi, kept_hi, M, eps)


def prune_compress_24(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused 2:4 prune + compress: (compressed operand shaped as `torch._cslt_compress` returns it, per-row scale).

    Compare with the references on `as_flat(operand, rows, k)`: the slack past `compressed_numel` is left unwritten.
    """
    if triton is None:
        raise RuntimeError("triton is not installed; use prune_compress_24_ref")
    check_compressible(x)
    rows, k = x.shape
    scale = torch.empty(rows, dtype=torch.float32, device=x.device)
    if rows == 0:
        return torch.empty(0, k, dtype=x.dtype, device=x.device), scale
    operand = torch.empty(compressed_shape(rows, k), dtype=x.dtype, device=x.device)
    buffer = as_flat(operand, rows, k)
    values = buffer[: rows * k // 2].view(torch.int16)
    metadata = buffer[rows * k // 2 :].view(torch.uint8)
    grid = (-(-rows // M_TILE) * (M_TILE // 16),)
    _prune_compress_24_kernel[grid](
        x, values, metadata, scale, rows, k, x.stride(0), x.stride(1), NORM_EPS, BLOCK_G=min(64, triton.next_power_of_2(k // 4)),
    )  # fmt: skip
    return operand, scale


def as_flat(operand: torch.Tensor, rows: int, k: int) -> torch.Tensor:
    """The meaningful prefix of a compressed operand (values then metadata), as a flat view."""
    return operand.reshape(-1)[: compressed_numel(rows, k)]


__all__ = [
    "as_flat", "compress_24_ref", "compressed_numel", "compressed_shape", "decompress_24_ref", "layout_supported", "metadata_nibble_address",
    "prune_compress_24", "prune_compress_24_ref", "stored_indices_ref",
]  # fmt: skip
