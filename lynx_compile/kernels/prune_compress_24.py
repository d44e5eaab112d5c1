"""Fused 2:4 prune + norm compensation + compress: X (tokens × K) → cuSPARSELt's compressed operand of s·x̃ (sm_90).

The sparse GEMM (`torch._cslt_sparse_mm`) wants its 2:4 operand as one buffer in cuSPARSELt's own layout, which torch
only produces from an already-pruned dense matrix (`torch._cslt_compress`, yet another pass). These kernels write
that buffer straight from X, with the per-row norm scale s already applied to the stored values (so the GEMM output
needs no rescaling). The layout, found by experiment on an H100 (`benchmarks/probe_cslt_layout.py`;
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

from collections.abc import Sequence

import torch

from .activations import ACTIVATIONS, check_activation
from .nm_prune import NORM_EPS, nm_prune_ref

try:
    import triton
    import triton.language as tl

    from .activations import apply_activation
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
    return rows, -(-compressed_numel(rows, k) // torch.sym_max(rows, 1))  # sym_max: no guard on a symbolic M


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


def compensated_pruned_ref(x: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(s·x̃ rounded to X's dtype, s): the matrix whose compressed form the fused kernel writes.

    Pass the kernel's own `scale` to get its operand bit for bit: s is a sum over K, and the kernel sums in another
    order than torch, so the two s may differ in the last fp32 bit, and s·x̃ then round differently now and then.
    """
    pruned, ref_scale = nm_prune_ref(x, 2, 4)
    scale = ref_scale if scale is None else scale
    return (pruned.float() * scale[:, None]).to(x.dtype), scale


def prune_compress_24_ref(x: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """2:4 prune (lynx's rank rule), scale by s, compress: the fused kernel's output (given its `scale`)."""
    check_compressible(x)
    compensated, scale = compensated_pruned_ref(x, scale)
    return compress_24_ref(compensated), scale


# ---- Triton kernels ----------------------------------------------------------------------------------------------
#
# Two passes over X, each a 2-D grid of small programs (16 rows × 4·BLOCK_G columns) so that enough loads are in
# flight to approach memory speed: `_energy_kernel` writes each row's partial energies ‖x‖², ‖x̃‖² per column chunk;
# `_compress_kernel` reduces them to the row's scale s and writes the compressed operand of s·x̃. Scaling the stored
# values puts the norm compensation inside the GEMM — no pass over Y — for one extra read of X (K·2 bytes a row
# against N·4 for a scale pass over Y). Chunked partial sums keep the summation order fixed: deterministic output.

if triton is not None:

    @triton.jit
    def _load_members(
        head_ptr, tail_ptr, rows, chunk, M, K_HEAD, stride_hm, stride_hk, stride_tm, stride_tk,
        HEAD_ACTIVATION: tl.constexpr, TAIL_ACTIVATION: tl.constexpr, BLOCK_G: tl.constexpr,
    ):  # fmt: skip
        """A [rows, 4·BLOCK_G] tile of X = [act(head) | act(tail)], loaded contiguously from the one piece the chunk
        lies in (chunks never straddle), split into its 4 group members ([rows, BLOCK_G] each)."""
        start = chunk * 4 * BLOCK_G
        cols = tl.arange(0, 4 * BLOCK_G)[None, :]
        mask = (rows[:, None] < M) & (cols >= 0)
        if start < K_HEAD:
            x = tl.load(head_ptr + rows[:, None] * stride_hm + (start + cols) * stride_hk, mask=mask, other=0.0)
            x = apply_activation(x, HEAD_ACTIVATION)
        else:
            x = tl.load(tail_ptr + rows[:, None] * stride_tm + (start - K_HEAD + cols) * stride_tk, mask=mask,
                        other=0.0)  # fmt: skip
            x = apply_activation(x, TAIL_ACTIVATION)
        even, odd = tl.split(tl.reshape(x, (x.shape[0], BLOCK_G, 2, 2)))  # members (0, 2) and (1, 3)
        x0, x2 = tl.split(even)
        x1, x3 = tl.split(odd)
        return x0, x1, x2, x3

    @triton.jit
    def _beats(a, b):
        """Does magnitude `a` beat the later entry's magnitude `b`? NaN ranks as +inf; a tie goes to `a`."""
        a = tl.where(a != a, float("inf"), a)
        b = tl.where(b != b, float("inf"), b)
        return a >= b

    @triton.jit
    def _keep_2_of_4(f0, f1, f2, f3):
        """lynx's 2:4 rank rule, elementwise over the four members (fp32)."""
        a0, a1, a2, a3 = tl.abs(f0), tl.abs(f1), tl.abs(f2), tl.abs(f3)
        b01, b02, b03 = _beats(a0, a1).to(tl.int32), _beats(a0, a2).to(tl.int32), _beats(a0, a3).to(tl.int32)
        b12, b13, b23 = _beats(a1, a2).to(tl.int32), _beats(a1, a3).to(tl.int32), _beats(a2, a3).to(tl.int32)
        k0 = (3 - b01 - b02 - b03) < 2  # rank = number of entries that beat this one
        k1 = (b01 + 2 - b12 - b13) < 2
        k2 = (b02 + b12 + 1 - b23) < 2
        k3 = (b03 + b13 + b23) < 2
        return k0, k1, k2, k3

    @triton.jit
    def _energy_kernel(
        head_ptr, tail_ptr, total_ptr, kept_ptr,
        M, K_HEAD, stride_hm, stride_hk, stride_tm, stride_tk,
        HEAD_ACTIVATION: tl.constexpr, TAIL_ACTIVATION: tl.constexpr, BLOCK_G: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * 16 + tl.arange(0, 16)
        chunk = tl.program_id(1)
        x0, x1, x2, x3 = _load_members(head_ptr, tail_ptr, rows, chunk, M, K_HEAD, stride_hm, stride_hk, stride_tm,
                                       stride_tk, HEAD_ACTIVATION, TAIL_ACTIVATION, BLOCK_G)  # fmt: skip
        f0, f1, f2, f3 = x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)
        k0, k1, k2, k3 = _keep_2_of_4(f0, f1, f2, f3)
        q0, q1, q2, q3 = f0 * f0, f1 * f1, f2 * f2, f3 * f3
        total = tl.sum(q0 + q1 + q2 + q3, axis=1)
        kept = tl.sum(tl.where(k0, q0, 0.0) + tl.where(k1, q1, 0.0) + tl.where(k2, q2, 0.0) + tl.where(k3, q3, 0.0),
                      axis=1)  # fmt: skip
        n_chunks = tl.num_programs(1)
        tl.store(total_ptr + rows * n_chunks + chunk, total, mask=rows < M)
        tl.store(kept_ptr + rows * n_chunks + chunk, kept, mask=rows < M)

    @triton.jit
    def _row_scale(total_ptr, kept_ptr, rows, M, n_chunks, eps, CHUNKS: tl.constexpr):
        """s for each row from its partial energies (CHUNKS: n_chunks rounded up to a power of two)."""
        chunks = tl.arange(0, CHUNKS)
        mask = (rows[:, None] < M) & (chunks[None, :] < n_chunks)
        offsets = rows[:, None] * n_chunks + chunks[None, :]
        total = tl.sum(tl.load(total_ptr + offsets, mask=mask, other=0.0), axis=1)
        kept = tl.sum(tl.load(kept_ptr + offsets, mask=mask, other=0.0), axis=1)
        scale = tl.sqrt(total / (kept + eps))
        return tl.where(total - total == 0.0, scale, 1.0)  # non-finite rows get 1, as in nm_prune

    @triton.jit
    def _encode_half(
        head_ptr, tail_ptr, values_ptr, rows, scale, chunk, M, K, K_HEAD, stride_hm, stride_hk, stride_tm, stride_tk,
        HEAD_ACTIVATION: tl.constexpr, TAIL_ACTIVATION: tl.constexpr, BLOCK_G: tl.constexpr,
    ):  # fmt: skip
        """Prune, scale and encode 8 rows of the chunk; store their values, return their metadata nibbles."""
        x0, x1, x2, x3 = _load_members(head_ptr, tail_ptr, rows, chunk, M, K_HEAD, stride_hm, stride_hk, stride_tm,
                                       stride_tk, HEAD_ACTIVATION, TAIL_ACTIVATION, BLOCK_G)  # fmt: skip
        f0, f1, f2, f3 = x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)
        k0, k1, k2, k3 = _keep_2_of_4(f0, f1, f2, f3)
        s = scale[:, None]
        v0 = tl.where(k0, f0 * s, 0.0).to(x0.dtype)
        v1 = tl.where(k1, f1 * s, 0.0).to(x0.dtype)
        v2 = tl.where(k2, f2 * s, 0.0).to(x0.dtype)
        v3 = tl.where(k3, f3 * s, 0.0).to(x0.dtype)
        # Stored slots: the nonzeros (after scaling and rounding, as cuSPARSELt would see them); with fewer than
        # two, the free slots are taken from index 3 down (see the module docstring).
        n0, n1, n2, n3 = v0 != 0.0, v1 != 0.0, v2 != 0.0, v3 != 0.0
        count = n0.to(tl.int32) + n1.to(tl.int32) + n2.to(tl.int32) + n3.to(tl.int32)
        lo = tl.where(n0, 0, tl.where(n1, 1, 2))
        hi = tl.where(n3 | (count < 2), 3, tl.where(n2, 2, 1))
        lo_value = tl.where(lo == 0, v0, tl.where(lo == 1, v1, v2))
        hi_value = tl.where(hi == 3, v3, tl.where(hi == 2, v2, v1))
        pairs = tl.reshape(tl.join(lo_value, hi_value), (lo_value.shape[0], 2 * BLOCK_G))
        cols = chunk * 2 * BLOCK_G + tl.arange(0, 2 * BLOCK_G)
        mask = (rows[:, None] < M) & (cols[None, :] < K // 2)
        tl.store(values_ptr + rows[:, None] * (K // 2) + cols[None, :], pairs, mask=mask)
        return lo | (hi << 2)

    @triton.jit
    def _compress_kernel(
        # pointers: values and metadata are two views of one output buffer
        head_ptr, tail_ptr, values_ptr, meta_ptr, total_ptr, kept_ptr, scale_ptr,
        # sizes and strides
        M, K, K_HEAD, stride_hm, stride_hk, stride_tm, stride_tk, n_chunks, eps,
        # meta-parameters
        HEAD_ACTIVATION: tl.constexpr, TAIL_ACTIVATION: tl.constexpr, BLOCK_G: tl.constexpr, CHUNKS: tl.constexpr,
    ):  # fmt: skip
        # Rows r and r + 8 share each metadata byte (low and high nibble): a program takes 16 rows as two halves of
        # 8 and writes whole bytes. The grid covers M rounded up to 64: padding rows load as zeros and come out as
        # empty groups, as cuSPARSELt writes them.
        chunk = tl.program_id(1)
        rows_lo = tl.program_id(0) * 16 + tl.arange(0, 8)
        rows_hi = rows_lo + 8
        scale_lo = _row_scale(total_ptr, kept_ptr, rows_lo, M, n_chunks, eps, CHUNKS)
        scale_hi = _row_scale(total_ptr, kept_ptr, rows_hi, M, n_chunks, eps, CHUNKS)
        nibble_lo = _encode_half(head_ptr, tail_ptr, values_ptr, rows_lo, scale_lo, chunk, M, K, K_HEAD, stride_hm,
                                 stride_hk, stride_tm, stride_tk, HEAD_ACTIVATION, TAIL_ACTIVATION, BLOCK_G)
        nibble_hi = _encode_half(head_ptr, tail_ptr, values_ptr, rows_hi, scale_hi, chunk, M, K, K_HEAD, stride_hm,
                                 stride_hk, stride_tm, stride_tk, HEAD_ACTIVATION, TAIL_ACTIVATION, BLOCK_G)

        r = rows_lo[:, None]
        g = chunk * BLOCK_G + tl.arange(0, BLOCK_G)[None, :]
        address = ((r // 64) * (K // 32) + g // 8) * 512 + (r & 7) * 16 + ((r >> 4) & 3) * 128 + (g & 3) * 4 \
            + ((g >> 2) & 1) * 2
        tl.store(meta_ptr + address // 2, (nibble_lo | (nibble_hi << 4)).to(tl.uint8), mask=g < K // 4)
        if chunk == 0:
            tl.store(scale_ptr + rows_lo, scale_lo, mask=rows_lo < M)
            tl.store(scale_ptr + rows_hi, scale_hi, mask=rows_hi < M)


def prune_compress_24(
    x: torch.Tensor | Sequence[torch.Tensor], activations: str | Sequence[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused 2:4 prune + norm compensation + compress: (operand of s·x̃ shaped as `torch._cslt_compress` returns
    it, the per-row scale s). The GEMM on the operand needs no scale afterwards.

    `x` is the activation (tokens, K), or up to two pieces whose concatenation along K it is, each with an
    activation applied on load (`activations.ACTIVATIONS`; a list, or names joined by commas):
    X = [act₀(x₀) | act₁(x₁)] is pruned without ever being written. Compare with the references on
    `as_flat(operand, rows, k)`: the slack past `compressed_numel` is left unwritten.
    """
    if triton is None:
        raise RuntimeError("triton is not installed; use prune_compress_24_ref")
    pieces, activations = check_pieces(x, activations)
    rows, k = pieces[0].shape[0], sum(piece.shape[1] for piece in pieces)
    head, tail = pieces[0], pieces[-1]
    operand = torch.empty(compressed_shape(rows, k), dtype=head.dtype, device=head.device)
    if rows == 0:
        return operand, torch.empty(0, device=head.device)
    buffer = as_flat(operand, rows, k)
    block_g = GROUPS_PER_PROGRAM  # the largest power of two ≤ 64 dividing every piece's group count: no straddling
    while any((piece.shape[1] // 4) % block_g for piece in pieces):
        block_g //= 2
    n_chunks = k // 4 // block_g
    total = torch.empty(rows, n_chunks, dtype=torch.float32, device=head.device)
    kept = torch.empty_like(total)
    scale = torch.empty(rows, dtype=torch.float32, device=head.device)
    codes = {"HEAD_ACTIVATION": ACTIVATIONS[activations[0]], "TAIL_ACTIVATION": ACTIVATIONS[activations[-1]]}
    _energy_kernel[(triton.cdiv(rows, 16), n_chunks)](
        head, tail, total, kept, rows, head.shape[1], *head.stride(), *tail.stride(), BLOCK_G=block_g, **codes
    )  # fmt: skip
    _compress_kernel[(triton.cdiv(rows, M_TILE) * (M_TILE // 16), n_chunks)](
        head, tail, buffer[: rows * k // 2], buffer[rows * k // 2 :].view(torch.uint8), total, kept, scale,
        rows, k, head.shape[1], *head.stride(), *tail.stride(), n_chunks, NORM_EPS,
        BLOCK_G=block_g, CHUNKS=triton.next_power_of_2(n_chunks), **codes,
    )  # fmt: skip
    return operand, scale


def check_pieces(
    x: torch.Tensor | Sequence[torch.Tensor], activations: str | Sequence[str] | None
) -> tuple[list[torch.Tensor], list[str]]:
    """The pieces and activations `prune_compress_24` takes, checked; a clear error for anything it cannot encode."""
    pieces = [x] if isinstance(x, torch.Tensor) else list(x)
    if activations is None:
        activations = ["none"] * len(pieces)
    activations = activations.split(",") if isinstance(activations, str) else list(activations)
    if not 1 <= len(pieces) <= 2 or len(activations) != len(pieces):
        raise ValueError(f"expected 1 or 2 pieces with an activation each, got {len(pieces)} and {len(activations)}")
    for piece, activation in zip(pieces, activations):
        check_activation(activation)
        if piece.dim() != 2 or piece.shape[1] % 4:
            raise ValueError(f"expected 2-D pieces (tokens, K) with K % 4 == 0, got shape {tuple(piece.shape)}")
    head = pieces[0]
    if any((p.shape[0], p.dtype, p.device) != (head.shape[0], head.dtype, head.device) for p in pieces):
        raise ValueError("the pieces must share token count, dtype and device: "
                         + ", ".join(f"{tuple(p.shape)} {p.dtype} {p.device}" for p in pieces))  # fmt: skip
    check_compressible(head.new_empty(0, sum(p.shape[1] for p in pieces)))
    return pieces, activations


def as_flat(operand: torch.Tensor, rows: int, k: int) -> torch.Tensor:
    """The meaningful prefix of a compressed operand (values then metadata), as a flat view."""
    return operand.reshape(-1)[: compressed_numel(rows, k)]


__all__ = [
    "as_flat", "check_pieces", "compensated_pruned_ref", "compress_24_ref", "compressed_numel", "compressed_shape",
    "decompress_24_ref", "layout_supported", "metadata_nibble_address",
    "prune_compress_24", "prune_compress_24_ref", "stored_indices_ref",
]  # fmt: skip
