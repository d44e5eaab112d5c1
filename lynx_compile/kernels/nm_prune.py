"""N:M activation pruning along K with the per-row norm-compensation scale.

For a 2-D activation X (M tokens × K channels) and every group of ``m`` consecutive channels of a row, keep the ``n``
entries of largest magnitude and zero the rest. Alongside, per row, the norm-compensation scale

    s = sqrt(‖x‖² / (‖x̃‖² + eps)),   eps = 1e-8,

so that s·x̃ has the energy of x; since (s·x̃)·Wᵀ = s·(x̃·Wᵀ), callers apply s after the GEMM.

Rank rule, shared bit-for-bit by the reference and the kernel: magnitudes are compared in fp32 (exact for fp16, bf16
and fp32 inputs); element j of a group has rank #{i : |x_i| > |x_j|} + #{i < j : |x_i| = |x_j|} and is kept when its
rank is below n. So ties go to the lower index, and the mask depends on the values alone.

Non-finite values: NaN ranks as +inf, so a NaN is kept and reaches the GEMM, as it would in a dense layer; a row
whose ‖x‖² is not finite (NaN, Inf, or fp32 overflow) gets s = 1 instead of inf/inf.

Shapes: x (M, K), any strides, fp32/fp16/bf16, K % m == 0, m a power of two ≤ 16, 1 ≤ n < m. Returns
(pruned (M, K) contiguous in x's dtype, scale (M,) fp32).
"""

from __future__ import annotations

import torch

from .grid import cdiv, next_power_of_2
try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships for Linux only; the reference still works elsewhere.
    triton = None

NORM_EPS = 1e-8
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_GROUP = 16


def check_nm(n: int, m: int) -> None:
    """Raise ValueError unless n:m is a pattern the kernel implements."""
    if not (isinstance(n, int) and isinstance(m, int)) or isinstance(n, bool) or isinstance(m, bool):
        raise ValueError(f"n and m must be ints, got n={n!r}, m={m!r}")
    if m < 2 or m > MAX_GROUP or m & (m - 1):
        raise ValueError(f"m must be a power of two in [2, {MAX_GROUP}], got m={m}")
    if not 1 <= n < m:
        raise ValueError(f"n must satisfy 1 <= n < m, got n={n}, m={m}")


def _check_input(x: torch.Tensor, n: int, m: int) -> None:
    check_nm(n, m)
    if x.dim() != 2:
        raise ValueError(f"nm_prune expects a 2-D activation (tokens, K), got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"nm_prune supports {SUPPORTED_DTYPES}, got {x.dtype}")
    if x.shape[1] % m:
        raise ValueError(f"K={x.shape[1]} is not a multiple of m={m}")


# ---- PyTorch reference -------------------------------------------------------------------------------------------


def nm_keep_mask_ref(x: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean (M, K) mask of the kept entries by the rank rule in the module docstring.

    Each pair of members (i < j) of a group is compared once: i beats j when |x_i| >= |x_j| (the tie goes to the lower
    index), else j beats i. That is m(m-1)/2 comparisons of (M, K/m) tensors instead of an (M, K/m, m, m) one, which
    makes the simulate path and calibration several times faster on CPU (the tests keep the literal rule to check it).
    """
    rows, k = x.shape
    mag = x.float().abs().nan_to_num(nan=float("inf"), posinf=float("inf")).reshape(rows, k // m, m)
    members = mag.unbind(-1)
    beaten_by = [torch.zeros(rows, k // m, dtype=torch.uint8, device=x.device) for _ in range(m)]
    for i in range(m):
        for j in range(i + 1, m):
            i_wins = members[i] >= members[j]
            beaten_by[j] += i_wins
            beaten_by[i] += ~i_wins
    return (torch.stack(beaten_by, -1) < n).reshape(rows, k)


def norm_scale_ref(x: torch.Tensor, keep: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    square = x.float().square()
    # square·keep, not where(keep, square, 0): twice as fast on CPU, and equal wherever the row's ‖x‖² is finite
    # (the only rows whose scale is not 1).
    return norm_scale_from_energy(square.sum(-1), (square * keep).sum(-1), eps)


def norm_scale_from_energy(total: torch.Tensor, kept: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """s = sqrt(‖x‖² / (‖x̃‖² + eps)) from the two energies; rows with a non-finite ‖x‖² get 1."""
    scale = torch.sqrt(total / (kept + eps))
    return torch.where(torch.isfinite(total), scale, 1.0)


def nm_prune_ref(x: torch.Tensor, n: int = 2, m: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    _check_input(x, n, m)
    keep = nm_keep_mask_ref(x, n, m)
    return torch.where(keep, x, 0).contiguous(), norm_scale_ref(x, keep)


# ---- Triton kernel -----------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def keep_top_magnitudes(xf, N_KEEP: tl.constexpr, GROUP: tl.constexpr):
        """Keep-mask of a [rows, groups, GROUP] fp32 tile by the rank rule of the module docstring."""
        member = tl.arange(0, GROUP)[None, None, :]
        mag = tl.abs(xf)
        mag = tl.where(mag != mag, float("inf"), mag)  # NaN ranks as +inf (see the docstring)
        # rank[j] = #(i beats j); GROUP is a power of two <= 16, so this unrolls into a few compares.
        rank = tl.zeros(xf.shape, dtype=tl.int32)
        for i in tl.static_range(GROUP):
            mag_i = tl.sum(tl.where(member == i, mag, 0.0), axis=2)[:, :, None]
            beats = (mag_i > mag) | ((mag_i == mag) & (i < member))
            rank += beats.to(tl.int32)
        return rank < N_KEEP

    @triton.jit
    def _nm_prune_kernel(
        # pointers
        x_ptr, out_ptr, scale_ptr,
        # sizes and strides (out is contiguous)
        M, K, stride_xm, stride_xk,
        eps,
        # meta-parameters
        N_KEEP: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr,
    ):  # fmt: skip
        # One program owns BLOCK_M rows and walks K in tiles of BLOCK_G groups, each tile seen as
        # [BLOCK_M, BLOCK_G, GROUP]. X is read once: the sums for the scale accumulate as the tiles pass.
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        member = tl.arange(0, GROUP)
        n_groups = K // GROUP
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        kept = tl.zeros([BLOCK_M], dtype=tl.float32)
        # A while loop, not range(0, n_groups, BLOCK_G): Triton 3.6's interpreter hands K over as a one-element
        # array, which numpy 2.x refuses as a range bound (but takes as a truth value).
        g0 = 0
        while g0 < n_groups:
            groups = g0 + tl.arange(0, BLOCK_G)
            cols = groups[None, :, None] * GROUP + member[None, None, :]
            mask = (rows[:, None, None] < M) & (groups[None, :, None] < n_groups)
            x = tl.load(x_ptr + rows[:, None, None] * stride_xm + cols * stride_xk, mask=mask, other=0.0)
            xf = x.to(tl.float32)
            keep = keep_top_magnitudes(xf, N_KEEP, GROUP)
            tl.store(out_ptr + rows[:, None, None] * K + cols, tl.where(keep, x, 0.0), mask=mask)
            square = xf * xf
            total += tl.sum(tl.sum(square, axis=2), axis=1)
            kept += tl.sum(tl.sum(tl.where(keep, square, 0.0), axis=2), axis=1)
            g0 += BLOCK_G

        scale = tl.sqrt(total / (kept + eps))
        # total - total is 0 for finite totals and NaN for Inf/NaN: the one test that works on every backend.
        scale = tl.where(total - total == 0.0, scale, 1.0)
        tl.store(scale_ptr + rows, scale, mask=rows < M)


def _launch_config(rows: int, k: int, m: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_G): a 16 x 128-element tile, narrower when K is small (no wasted masked lanes)."""
    groups_per_tile = max(1, 128 // m)
    block_g = min(groups_per_tile, next_power_of_2(max(1, k // m)))
    return 16, block_g


def nm_prune_triton(x: torch.Tensor, n: int = 2, m: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the Triton kernel (on CPU tensors this needs TRITON_INTERPRET=1)."""
    if triton is None:
        raise RuntimeError("triton is not installed; use nm_prune_ref")
    _check_input(x, n, m)
    rows, k = x.shape
    out = torch.empty((rows, k), dtype=x.dtype, device=x.device)
    scale = torch.empty((rows,), dtype=torch.float32, device=x.device)
    if rows == 0:
        return out, scale
    block_m, block_g = _launch_config(rows, k, m)
    grid = (cdiv(rows, block_m),)
    _nm_prune_kernel[grid](
        x, out, scale, rows, k, x.stride(0), x.stride(1), NORM_EPS,
        N_KEEP=n, GROUP=m, BLOCK_M=block_m, BLOCK_G=block_g,
    )  # fmt: skip
    return out, scale


def nm_prune(x: torch.Tensor, n: int = 2, m: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune x to n:m along K and return (pruned, scale): the Triton kernel on CUDA, the reference elsewhere."""
    if triton is not None and x.is_cuda:
        return nm_prune_triton(x, n, m)
    return nm_prune_ref(x, n, m)
