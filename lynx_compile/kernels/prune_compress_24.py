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

from .nm_prune import nm_prune_ref, norm_scale_from_energy

try:
    import triton
    import triton.language as tl

except ImportError:
    triton = None

COMPRESSED_DTYPES = (torch.float16, torch.bfloat16)
K_TILE = 32  # K elements per metadata tile
K_MULTIPLE = 64  # K % 64 == 32 is padded by cuSPARSELt in a way not implemented here
M_TILE = 64  # rows per metadata tile; M is padded to it
EMPTY_GROUP = 0xE  # nibble of a group with no nonzeros: stored indices (2, 3)
GROUPS_PER_PROGRAM = 64  # 256 K-elements: with 16 rows, 8 KB of bf16 a program


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
    def _beats(a, b):
        """Does the entry of magnitude `a` beat the later entry of magnitude `b`? (NaN ranks as +inf; ties: a wins)"""
        a = tl.where(a != a, float("inf"), a)
        b = tl.where(b != b, float("inf"), b)
        return a >= b

    @triton.jit
    def _half_tile(x_ptr, rows, groups, M, n_groups, stride_xm, stride_xk, values_ptr, K):
        """Prune + encode one [8 rows, BLOCK_G groups] half tile; store its values. Returns (nibble, total, kept).

        The 4 members of a group are 4 separate [rows, groups] tensors, so the whole 2:4 decision is elementwise:
        no reduction over a size-4 axis, nothing but compares and selects in registers.
        """
        mask = (rows[:, None] < M) & (groups[None, :] < n_groups)
        base = x_ptr + rows[:, None] * stride_xm + groups[None, :] * 4 * stride_xk
        x0 = tl.load(base, mask=mask, other=0.0)
        x1 = tl.load(base + stride_xk, mask=mask, other=0.0)
        x2 = tl.load(base + 2 * stride_xk, mask=mask, other=0.0)
        x3 = tl.load(base + 3 * stride_xk, mask=mask, other=0.0)
        f0, f1, f2, f3 = x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)

        # 2:4 keep mask: j is kept when fewer than 2 entries beat it (lynx's rank rule, ties to the lower index).
        b01, b02, b03 = _beats(tl.abs(f0), tl.abs(f1)), _beats(tl.abs(f0), tl.abs(f2)), _beats(tl.abs(f0), tl.abs(f3))
        b12, b13, b23 = _beats(tl.abs(f1), tl.abs(f2)), _beats(tl.abs(f1), tl.abs(f3)), _beats(tl.abs(f2), tl.abs(f3))
        k0 = ((~b01).to(tl.int32) + (~b02).to(tl.int32) + (~b03).to(tl.int32)) < 2
        k1 = (b01.to(tl.int32) + (~b12).to(tl.int32) + (~b13).to(tl.int32)) < 2
        k2 = (b02.to(tl.int32) + b12.to(tl.int32) + (~b23).to(tl.int32)) < 2
        k3 = (b03.to(tl.int32) + b13.to(tl.int32) + b23.to(tl.int32)) < 2

        # Stored slots: the kept nonzeros, then the highest free indices (see the module docstring).
        n0, n1, n2, n3 = k0 & (f0 != 0.0), k1 & (f1 != 0.0), k2 & (f2 != 0.0), k3 & (f3 != 0.0)
        # With two kept nonzeros they are the slots; with fewer, the free slots are taken from index 3 down.
        count = n0.to(tl.int32) + n1.to(tl.int32) + n2.to(tl.int32) + n3.to(tl.int32)
        lo = tl.where(n0, 0, tl.where(n1, 1, 2))
        hi = tl.where(n3 | (count < 2), 3, tl.where(n2, 2, 1))

        # Move values as raw 16-bit patterns so that -0.0 and NaN payloads survive.
        w0 = tl.where(k0, x0.to(tl.int16, bitcast=True), 0)
        w1 = tl.where(k1, x1.to(tl.int16, bitcast=True), 0)
        w2 = tl.where(k2, x2.to(tl.int16, bitcast=True), 0)
        w3 = tl.where(k3, x3.to(tl.int16, bitcast=True), 0)
        lo_bits = tl.where(lo == 0, w0, tl.where(lo == 1, w1, w2))
        hi_bits = tl.where(hi == 3, w3, tl.where(hi == 2, w2, w1))
        out = values_ptr + rows[:, None] * (K // 2) + groups[None, :] * 2
        tl.store(out, lo_bits, mask=mask)
        tl.store(out + 1, hi_bits, mask=mask)

        total = tl.sum(f0 * f0 + f1 * f1 + f2 * f2 + f3 * f3, axis=1)
        kept = tl.sum(tl.where(k0, f0 * f0, 0.0) + tl.where(k1, f1 * f1, 0.0) + tl.where(k2, f2 * f2, 0.0)
                      + tl.where(k3, f3 * f3, 0.0), axis=1)  # fmt: skip
        return lo | (hi << 2), total, kept

    @triton.jit
    def _prune_compress_24_kernel(
        # pointers: values and metadata are two views of one output buffer; energies are (M, n_chunks) partial sums
        x_ptr, values_ptr, meta_ptr, total_ptr, kept_ptr,
        # sizes and strides
        M, K, stride_xm, stride_xk,
        # meta-parameters
        BLOCK_G: tl.constexpr,
    ):  # fmt: skip
        # Program (i, j) owns rows 16i .. 16i+15 and groups j·BLOCK_G onwards: many small programs, so that enough
        # loads are in flight to approach memory speed. Rows r and r + 8 share each metadata byte (low and high
        # nibble): the program handles them as two halves of 8 rows and writes whole bytes. The grid covers M
        # rounded up to 64: padding rows load as zeros and come out as empty groups, as cuSPARSELt writes them.
        pid_m = tl.program_id(0)
        pid_k = tl.program_id(1)
        n_groups = K // 4
        n_chunks = tl.num_programs(1)
        rows_lo = pid_m * 16 + tl.arange(0, 8)
        rows_hi = rows_lo + 8
        groups = pid_k * BLOCK_G + tl.arange(0, BLOCK_G)
        nibble_lo, total_lo, kept_lo = _half_tile(x_ptr, rows_lo, groups, M, n_groups, stride_xm, stride_xk,
                                                  values_ptr, K)  # fmt: skip
        nibble_hi, total_hi, kept_hi = _half_tile(x_ptr, rows_hi, groups, M, n_groups, stride_xm, stride_xk,
                                                  values_ptr, K)  # fmt: skip

        r = rows_lo[:, None]
        g = groups[None, :]
        address = ((r // 64) * (K // 32) + g // 8) * 512 + (r & 7) * 16 + ((r >> 4) & 3) * 128 + (g & 3) * 4 \
            + ((g >> 2) & 1) * 2
        tl.store(meta_ptr + address // 2, (nibble_lo | (nibble_hi << 4)).to(tl.uint8), mask=g < n_groups)

        tl.store(total_ptr + rows_lo * n_chunks + pid_k, total_lo, mask=rows_lo < M)
        tl.store(kept_ptr + rows_lo * n_chunks + pid_k, kept_lo, mask=rows_lo < M)
        tl.store(total_ptr + rows_hi * n_chunks + pid_k, total_hi, mask=rows_hi < M)
        tl.store(kept_ptr + rows_hi * n_chunks + pid_k, kept_hi, mask=rows_hi < M)


def prune_compress_24(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused 2:4 prune + compress: (compressed operand shaped as `torch._cslt_compress` returns it, per-row scale).

    Compare with the references on `as_flat(operand, rows, k)`: the slack past `compressed_numel` is left unwritten.
    The scale is reduced from per-chunk energies in a second, tiny step (M × K/256 floats), which keeps the sum
    order fixed: the result is deterministic.
    """
    if triton is None:
        raise RuntimeError("triton is not installed; use prune_compress_24_ref")
    check_compressible(x)
    rows, k = x.shape
    if rows == 0:
        return torch.empty(0, k, dtype=x.dtype, device=x.device), torch.empty(0, device=x.device)
    operand = torch.empty(compressed_shape(rows, k), dtype=x.dtype, device=x.device)
    buffer = as_flat(operand, rows, k)
    values = buffer[: rows * k // 2].view(torch.int16)
    metadata = buffer[rows * k // 2 :].view(torch.uint8)
    block_g = min(GROUPS_PER_PROGRAM, triton.next_power_of_2(k // 4))
    grid = (-(-rows // M_TILE) * (M_TILE // 16), -(-(k // 4) // block_g))
    total = torch.empty(rows, grid[1], dtype=torch.float32, device=x.device)
    kept = torch.empty_like(total)
    _prune_compress_24_kernel[grid](x, values, metadata, total, kept, rows, k, x.stride(0), x.stride(1),
                                    BLOCK_G=block_g)  # fmt: skip
    return operand, norm_scale_from_energy(total.sum(1), kept.sum(1))


def as_flat(operand: torch.Tensor, rows: int, k: int) -> torch.Tensor:
    """The meaningful prefix of a compressed operand (values then metadata), as a flat view."""
    return operand.reshape(-1)[: compressed_numel(rows, k)]


__all__ = [
    "as_flat", "compress_24_ref", "compressed_numel", "compressed_shape", "decompress_24_ref", "layout_supported", "metadata_nibble_address",
    "prune_compress_24", "prune_compress_24_ref", "stored_indices_ref",
]  # fmt: skip
