"""Calibrated low-rank correction (LoRA) of a sparsified linear, fitted in closed form.

Where the dense layer computes x·Wᵀ + b, a sparsified one computes (s·x̃)·Wᵀ + b: each token's output misses
r = d·Wᵀ with d = x − s·x̃ (d = x − x̃ without norm compensation). The correction adds (x·Bᵀ)·Aᵀ, fed by the dense
x, with A (N × rank) and B (rank × K). Over calibration tokens X (T × K) with residuals R = D·Wᵀ (T × N), the best
correction of a given rank solves the reduced-rank ridge regression

    min over C = A·B of rank ≤ r:   ‖R − X·Cᵀ‖² + λ‖C‖²

in closed form. The full-rank ridge fit is Cλ = W·Σdx·Σ⁻¹ with Σ = Σxx + λI, Σxx = XᵀX, Σdx = DᵀX. Writing the
objective as ‖[R, 0] − C·[X, √λ·I]ᵀ‖² makes it plain reduced-rank regression on augmented data, whose optimum
projects Cλ onto the top-r eigenvectors U of its fitted-value Gram Cλ·Σ·Cλᵀ = W·(Σdx·Σ⁻¹·Σdxᵀ)·Wᵀ: A = U_r and
B = U_rᵀ·Cλ. Only Σxx and Σdx are needed, K² fp64 numbers each per layer whatever the token count (twice over: two
halves of the tokens, for the ridge below), so they are accumulated while the samples stream through the model. The eigenvectors come ordered, so the adapter of any rank
below the fitted one is a prefix of it, and the calibration error of every prefix follows from the statistics.
λ matters: with few tokens per input channel an unregularised fit chases noise, so by default it is chosen per layer
by two-fold cross-validation over halves of the captured tokens (`choose_ridge`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

from .method import Method, pruning_residual

logger = logging.getLogger(__name__)

DEFAULT_RANK = 64
# Candidate λ, relative to the mean input energy per channel. The smallest still makes Σ positive definite when the
# captured inputs are rank-deficient (few tokens, dead channels); the largest shrinks a fit made from few tokens per
# channel, which otherwise overfits (a 1024-channel layer fitted on 1024 random tokens got worse on fresh ones).
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes of fp64 statistics held at once; more layers mean more passes over samples
_CHUNK_TOKENS = 8192  # fp64 copies of activations are made this many tokens at a time


@dataclass(frozen=True)
class LoraAdapter:
    """y += (x·Bᵀ)·Aᵀ: `a` (N, rank) and `b` (rank, K)."""

    a: torch.Tensor
    b: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.a, torch.Tensor) or not isinstance(self.b, torch.Tensor):
            raise TypeError(f"LoraAdapter takes two tensors, got {type(self.a).__name__} and {type(self.b).__name__}")
        if self.a.dim() != 2 or self.b.dim() != 2 or self.a.shape[1] != self.b.shape[0]:
            shapes = f"{tuple(self.a.shape)}, {tuple(self.b.shape)}"
            raise ValueError(f"LoRA adapter needs a (N, r) and b (r, K), got {shapes}")

    @property
    def rank(self) -> int:
        return self.b.shape[0]

    def __eq__(self, other: object) -> bool:
        """By value (the generated comparison would ask a tensor for its truth)."""
        if not isinstance(other, LoraAdapter):
            return NotImplemented
        return torch.equal(self.a, other.a) and torch.equal(self.b, other.b)

    def __hash__(self) -> int:  # equal adapters have equal shapes
        return hash((tuple(self.a.shape), tuple(self.b.shape)))

    def truncated(self, rank: int) -> LoraAdapter:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= self.rank:
            raise ValueError(f"cannot truncate a rank-{self.rank} adapter to rank {rank}")
        return LoraAdapter(self.a[:, :rank], self.b[:rank])

    def to(self, *args: Any, **kwargs: Any) -> LoraAdapter:
        return LoraAdapter(self.a.to(*args, **kwargs), self.b.to(*args, **kwargs))

    def correction(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.b.to(x).t()) @ self.a.to(x).t()

    def digest(self) -> str:
        """A hash of the adapter's content (for cache keys: two equal adapters hash the same)."""
        return tensor_digest(self.a) + tensor_digest(self.b)


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and values (16 hex digits). Kept on the tensor until it is modified (its
    version counter moves): every compiled graph's cache key hashes the policy's adapters."""
    cached = getattr(tensor, "_lynx_digest", None)
    if cached is not None and cached[0] == tensor._version:
        return cached[1]
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{data.dtype} {tuple(data.shape)}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    tensor._lynx_digest = (tensor._version, digest.hexdigest()[:16])
    return tensor._lynx_digest[1]


class Moments:
    """Sums over a set of tokens: Σxx = XᵀX, Σdx = DᵀX, ‖R‖², ‖Y‖² (fp64), and the token count."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.xx = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.dx = torch.zeros_like(self.xx)
        self.residual_energy = torch.zeros((), dtype=torch.float64, device=device)
        self.output_energy = torch.zeros_like(self.residual_energy)
        self.tokens = 0

    def accumulate(self, x: torch.Tensor, d: torch.Tensor, outputs: torch.Tensor, weight: torch.Tensor) -> None:
        self.xx.addmm_(x.t(), x)
        self.dx.addmm_(d.t(), x)
        self.residual_energy += (d @ weight.double().t()).square().sum()
        self.output_energy += outputs.double().square().sum()
        self.tokens += x.shape[0]

    def __add__(self, other: Moments) -> Moments:
        total = Moments.__new__(Moments)
        total.xx, total.dx = self.xx + other.xx, self.dx + other.dx
        total.residual_energy = self.residual_energy + other.residual_energy
        total.output_energy = self.output_energy + other.output_energy
        total.tokens = self.tokens + other.tokens
        return total


class ResidualStatistics:
    """Streaming `Moments` of the tokens one linear sees, kept as two halves for choosing the ridge by
    cross-validation: the first and second half of the rows of every call (tokens of distinct image regions)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.halves = (Moments(in_features, device), Moments(in_features, device))

    @staticmethod
    def nbytes(in_features: int) -> int:
        return 4 * in_features * in_features * 8

    @property
    def tokens(self) -> int:
        return self.halves[0].tokens + self.halves[1].tokens

    def total(self) -> Moments:
        return self.halves[0] + self.halves[1]

    def add(self, rows: torch.Tensor, outputs: torch.Tensor, weight: torch.Tensor, method: Method) -> None:
        """Accumulate token rows x (T, K) of a linear with `weight`, whose dense outputs were `outputs` (T, N)."""
        weight64 = weight.detach().double()
        for moments, part in zip(self.halves, _halves(rows.shape[0])):
            part_rows, part_outputs = rows[part].detach(), outputs[part].detach()
            for start in range(0, part_rows.shape[0], _CHUNK_TOKENS):
                chunk = part_rows[start : start + _CHUNK_TOKENS]
                moments.accumulate(chunk.double(), pruning_residual(chunk, method),
                                   part_outputs[start : start + _CHUNK_TOKENS], weight64)  # fmt: skip

    def finite(self) -> bool:
        """Whether no input or residual seen held NaN or Inf (else the moments hold them, and no fit exists)."""
        return all(bool(torch.isfinite(m.xx).all() and torch.isfinite(m.dx).all()) for m in self.halves)

    def accumulate(self, x: torch.Tensor, d: torch.Tensor, outputs: torch.Tensor, weight: torch.Tensor) -> None:
        """Add tokens with inputs x and input residuals d (T, K, fp64), dense outputs (T, N), weight (N, K)."""
        for moments, part in zip(self.halves, _halves(x.shape[0])):
            moments.accumulate(x[part], d[part], outputs[part], weight)


def _halves(rows: int) -> tuple[slice, slice]:
    """The first and second half of a call's token rows: the two folds of `choose_ridge`."""
    half = (rows + 1) // 2
    return slice(0, half), slice(half, None)


@dataclass(frozen=True)
class LoraSolution:
    """The fitted correction of one layer up to `rank`, and the relative calibration error of each prefix."""

    adapter: LoraAdapter  # fp32, on the device the statistics were gathered on
    errors: tuple[float, ...]  # errors[r]: relative output error ‖R − X·(A_r·B_r)ᵀ‖ / ‖Y‖ with the top-r directions
    tokens: int
    ridge: float  # λ relative to the mean input energy per channel

    @property
    def rank(self) -> int:
        return self.adapter.rank

    def error_at(self, rank: int) -> float:
        return self.errors[min(rank, len(self.errors) - 1)]

    def adapter_at(self, rank: int) -> LoraAdapter:
        return self.adapter.truncated(min(rank, self.rank))


def solve_lora(
    weight: torch.Tensor, stats: ResidualStatistics, rank: int, ridge: float | None = None
) -> LoraSolution:
    """The rank-`rank` reduced-rank ridge solution for one layer (see the module docstring).

    `ridge` is λ relative to the mean input energy per channel. None (the default) chooses it from `RIDGE_GRID` by
    two-fold cross-validation over the halves of the statistics: with few tokens per input channel the fit would
    otherwise chase noise and make the layer worse on inputs it has not seen. Where no λ predicts the held-out half
    better than no correction at all, the solution has rank 0: the layer is better left uncorrected."""
    if rank < 0:
        raise ValueError(f"LoRA rank must be >= 0, got {rank}")
    if stats.tokens == 0:
        raise ValueError("no tokens were captured for this layer")
    if ridge is None:
        ridge = choose_ridge(weight, stats, rank)
        if ridge is None:
            return solve_moments(weight, stats.total(), 0, RIDGE_GRID[-1])
    return solve_moments(weight, stats.total(), rank, ridge)


def choose_ridge(weight: torch.Tensor, stats: ResidualStatistics, rank: int) -> float | None:
    """The `RIDGE_GRID` entry whose fit on one half predicts the other half best (summed over both ways), or None
    where none beats no correction."""
    first, second = stats.halves
    if min(first.tokens, second.tokens) == 0 or rank == 0:
        return RIDGE_GRID[-1]

    def held_out_energy(ridge: float | None) -> float:
        total = 0.0
        for fit, held in ((first, second), (second, first)):
            adapter = None if ridge is None else solve_moments(weight, fit, rank, ridge).adapter
            total += adapter_error(held, weight, adapter) ** 2 * held.output_energy.item()
        return total

    return min((None, *RIDGE_GRID), key=held_out_energy)


def solve_moments(weight: torch.Tensor, moments: Moments, rank: int, ridge: float) -> LoraSolution:
    """`solve_lora` on one set of moments with a given ridge."""
    w = weight.detach().to(moments.xx.device, torch.float64)
    out_features, in_features = w.shape
    rank = min(rank, out_features, in_features)
    energy_per_channel = moments.xx.diagonal().mean().clamp_min(1e-30)
    sigma = moments.xx.clone()
    sigma.diagonal().add_(ridge * energy_per_channel)
    cholesky, info = torch.linalg.cholesky_ex(sigma)
    if info.item():  # Σ not numerically positive definite (fp64 round-off on huge, degenerate inputs): more ridge
        sigma.diagonal().add_(1e-6 * energy_per_channel)
        cholesky = torch.linalg.cholesky(sigma)
    projection = torch.cholesky_solve(moments.dx.t().contiguous(), cholesky)  # Σ⁻¹·Σdxᵀ, so that Cλᵀ = it·Wᵀ
    gram_inner = moments.dx @ projection  # Σdx·Σ⁻¹·Σdxᵀ, K × K, symmetric PSD
    gram_inner = (gram_inner + gram_inner.t()) / 2
    a = _top_output_directions(w, gram_inner, rank)  # U_r, N × rank, orthonormal
    b_t = projection @ (w.t() @ a)  # (U_rᵀ·Cλ)ᵀ = Σ⁻¹·Σdxᵀ·Wᵀ·U_r, K × rank
    adapter = LoraAdapter(a.float(), b_t.t().float())
    return LoraSolution(adapter, _prefix_errors(w, moments, a, b_t), moments.tokens, ridge)


def _top_output_directions(w: torch.Tensor, gram_inner: torch.Tensor, rank: int) -> torch.Tensor:
    """Top-`rank` eigenvectors of W·H·Wᵀ (N × N), through the smaller of N × N and K × K eigenproblems."""
    out_features, in_features = w.shape
    if rank == 0:
        return w.new_zeros(out_features, 0)
    if out_features <= in_features:
        gram = w @ gram_inner @ w.t()
        values, vectors = torch.linalg.eigh((gram + gram.t()) / 2)
        return vectors[:, values.argsort(descending=True)[:rank]]
    # W·H·Wᵀ = F·Fᵀ with F = W·Q·Λ^½ (H = Q·Λ·Qᵀ); its top eigenvectors are F·V·μ^-½ for the top (V, μ) of Fᵀ·F.
    values, vectors = torch.linalg.eigh(gram_inner)
    factor = w @ (vectors * values.clamp_min(0).sqrt())
    mu, v = torch.linalg.eigh(factor.t() @ factor)
    order = mu.argsort(descending=True)[:rank]
    mu, v = mu[order], v[:, order]
    directions = factor @ v / mu.clamp_min(1e-300).sqrt()
    return torch.where(mu > mu.max().clamp_min(1e-300) * 1e-12, directions, 0.0)  # zero gain: no direction


def adapter_error(stats: Moments | ResidualStatistics, weight: torch.Tensor, adapter: LoraAdapter | None) -> float:
    """Relative output error of the pruned layer corrected by `adapter` (None: uncorrected) over the tokens of
    `stats` — e.g. statistics of held-out samples, to check that a fit generalises."""
    if isinstance(stats, ResidualStatistics):
        stats = stats.total()
    if adapter is None or adapter.rank == 0:
        return (stats.residual_energy / stats.output_energy.clamp_min(1e-30)).sqrt().item()
    w = weight.detach().to(stats.xx.device, torch.float64)
    a, b = adapter.a.to(w), adapter.b.to(w)
    cross = ((a.t() @ w @ stats.dx) * b).sum()
    quadratic = ((a.t() @ a) * (b @ stats.xx @ b.t())).sum()
    remaining = stats.residual_energy - 2 * cross + quadratic
    return (remaining.clamp_min(0) / stats.output_energy.clamp_min(1e-30)).sqrt().item()


def _prefix_errors(w: torch.Tensor, stats: Moments, a: torch.Tensor, b_t: torch.Tensor) -> tuple:
    """Relative error with the first r directions, r = 0..rank, from
    ‖R − X·Cᵀ‖² = ‖R‖² − 2·tr(Aᵀ·W·Σdx·Bᵀ) + tr(AᵀA·B·Σxx·Bᵀ), one direction at a time."""
    gain = 2 * ((a.t() @ w @ stats.dx) * b_t.t()).sum(1)  # per direction: 2·aᵢᵀ·W·Σdx·bᵢ
    cost = ((b_t.t() @ stats.xx) * b_t.t()).sum(1)  # bᵢᵀ·Σxx·bᵢ (the columns of A are orthonormal or zero)
    remaining = stats.residual_energy - torch.cat([gain.new_zeros(1), (gain - cost).cumsum(0)])
    relative = (remaining.clamp_min(0) / stats.output_energy.clamp_min(1e-30)).sqrt()
    return tuple(relative.tolist())
