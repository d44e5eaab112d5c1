"""A normalisation producing x, with the adaLN modulation DiTs put after it: x = norm(t) · (1 + a) + c.

FLUX, SD3, Qwen-Image, PixArt, DiT, HunyuanVideo and Wan feed q/k/v and the MLP's up-projection with
`LayerNorm(t) · (1 + scale) + shift` (scale and shift one row per sample); Wan does it in fp32 and casts the result;
Wan's cross-attention and RMSNorm models normalise with an affine weight and no modulation. Unfolded, Inductor's
kernel reads t and writes x for the compressor to read back. Folded, the graph computes only t's row statistics
(mean and rstd: inserted before the op as nodes, so Inductor computes them — fused into the kernel that writes t,
where there is one) and the compressor makes x from t, the statistics, the norm's weight and bias and the
modulation as it loads them: x is never written.

Numerics are Inductor's, not eager's: every step in fp32 from t, one rounding to t's dtype at the end (eager bf16
rounds after the norm and after each step of the modulation; Inductor, which compiles the dense model, fuses them
into one kernel computing in fp32), and a `1 + scale` is absorbed and added in fp32 as Inductor's kernel does,
not rounded first. The affine step and the modulation are fused multiply-adds (`tl.fma`, emulated in float64 by the
torch reference), so no compressor is left to contract them its own way. Measured on an H200: x made on load is bit
for bit the x Inductor writes for `layer_norm(t) · (1 + scale[:, None]) + shift[:, None]` (FLUX's form; eager bf16
differs from both in 37% of elements), so folding changes no mask.

Matched (Dynamo's graph): `F.layer_norm(t, (K,), w, b, eps)` or `F.rms_norm(t, (K,), w, eps)` (t possibly cast
to fp32 first), then optionally `· a` or `· (1 + a)`, then optionally `+ c`, with casts between; a and c broadcast
over x's rows in blocks of consecutive rows (one per sample, one for all, or one per row).
"""

from __future__ import annotations

import operator
from typing import Sequence

import torch
import torch.fx

from ..kernels.prune_compress_24 import Loader
from .base import Derived, FoldMatch, FoldSpec, ProducerFold, fake_value
from .norm_match import (
    ADDS,
    DTYPES,
    MULS,
    is_call,
    norm_call,
    split_modulation,
    through_casts,
    through_widening_casts,
    under_one_plus,
)

try:
    import triton
    import triton.language as tl

    from ..kernels.prune_compress_24 import load_tile
except ImportError:
    triton = None

NORMS = ("layer", "rms")
AFFINES = ("none", "w", "wb")

# params: (norm, affine, "a" or "one_plus_a" (x · (1 + a), the 1 + a computed on load) or "none", "c" or "none")
SCALES = ("none", "a", "one_plus_a")
# inputs: [t, mean (layer only), rstd, w (affine), b (wb), a (scaled), c (shifted)]


def _layout(params: tuple[str, ...]) -> dict[str, int]:
    """Where each input sits in the op's inputs, for these params; absent ones are missing."""
    norm, affine, scaled, shifted = params
    names = ["t", *(["mean"] if norm == "layer" else []), "rstd", *(["w"] if affine != "none" else []),
             *(["b"] if affine == "wb" else []), *(["a"] if scaled != "none" else []),
             *(["c"] if shifted != "none" else [])]  # fmt: skip
    return {name: index for index, name in enumerate(names)}


def _per_row(value: torch.Tensor, rows: int) -> torch.Tensor:
    """A broadcast operand (R, K) as one row per token row (rows, K): row r takes row r // (rows / R)."""
    flat = value.reshape(-1, value.shape[-1])
    return flat.repeat_interleave(rows // flat.shape[0], dim=0) if flat.shape[0] != rows else flat


def _multiply_add(y: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor:
    """y · scale + shift in fp32 as one fused multiply-add rounds it (float64 holds the product exactly)."""
    if scale is None:
        return y if shift is None else y + shift.float()
    if shift is None:
        return y * scale.float()
    return (y.double() * scale.double() + shift.double()).float()


if triton is not None:

    @triton.jit
    def _per_row_value(ptr, stride, rows, M):
        return tl.load(ptr + rows * stride, mask=rows < M, other=0.0).to(tl.float32)[:, None]

    @triton.jit
    def _fused_multiply_add(y, scale, shift, SCALED: tl.constexpr, SHIFTED: tl.constexpr):
        if SCALED and SHIFTED:
            y = tl.fma(y, scale, shift)
        elif SCALED:
            y = y * scale
        elif SHIFTED:
            y = y + shift
        return y

    @triton.jit
    def _load_normalized(operands, strides, scalars, rows, start, M, ARGS: tl.constexpr, WIDTH: tl.constexpr):
        """ARGS: the indices of mean, rstd, w, b, a and c among the operands (0 where absent), then whether x is
        scaled by 1 + a; scalars: (rows per row of a, a's rows, rows per row of c, c's rows)."""
        t = load_tile(operands[0], strides[0], strides[1], rows, start, M, WIDTH)
        y = t.to(tl.float32)
        if ARGS[0] != 0:
            y = y - _per_row_value(operands[ARGS[0]], strides[2 * ARGS[0]], rows, M)
        y = y * _per_row_value(operands[ARGS[1]], strides[2 * ARGS[1]], rows, M)
        cols = start + tl.arange(0, WIDTH)
        w = tl.load(operands[ARGS[2]] + cols * strides[2 * ARGS[2] + 1]).to(tl.float32)[None, :] if ARGS[2] != 0 \
            else y  # fmt: skip
        b = tl.load(operands[ARGS[3]] + cols * strides[2 * ARGS[3] + 1]).to(tl.float32)[None, :] if ARGS[3] != 0 \
            else y  # fmt: skip
        y = _fused_multiply_add(y, w, b, ARGS[2] != 0, ARGS[3] != 0)
        a = load_tile(operands[ARGS[4]], strides[2 * ARGS[4]], strides[2 * ARGS[4] + 1], rows // scalars[0], start,
                      scalars[1], WIDTH).to(tl.float32) if ARGS[4] != 0 else y  # fmt: skip
        a = a + 1.0 if ARGS[6] else a
        c = load_tile(operands[ARGS[5]], strides[2 * ARGS[5]], strides[2 * ARGS[5] + 1], rows // scalars[2], start,
                      scalars[3], WIDTH).to(tl.float32) if ARGS[5] != 0 else y  # fmt: skip
        y = _fused_multiply_add(y, a, c, ARGS[4] != 0, ARGS[5] != 0)
        return tl.where(rows[:, None] < M, y, 0.0).to(t.dtype)  # padding rows stay 0, whatever b is

else:
    _load_normalized = None


class Norm(ProducerFold):
    """x = (norm(t) [· w + b]) · a (or · (1 + a)) + c, in fp32, rounded once; see the module's docstring."""

    kind = "norm"
    measured_both_ways = True  # the loader's arithmetic can cost the compressor more than x's write it saves

    def match(self, x: torch.fx.Node) -> FoldMatch | None:
        x_value = fake_value(x)
        if not isinstance(x_value, torch.Tensor) or x_value.dtype not in DTYPES.values() or x_value.ndim < 2:
            return None
        absorbed: list[torch.fx.Node] = []  # consumers first
        # From x inwards: + c, then · a, each optional, each stage possibly under casts.
        node, operands = through_casts(x, absorbed, x), {}
        for name, targets in (("c", ADDS), ("a", MULS)):
            if node is None or not is_call(node, targets, x):
                continue
            found = split_modulation(node, x_value)
            if found is None:
                return None
            absorbed.append(node)
            node, operands[name] = found
            node = through_casts(node, absorbed, x)
        if node is None:
            return None
        scale, shift = operands.get("a"), operands.get("c")
        one_plus = under_one_plus(scale) if scale is not None else None
        if one_plus is not None:  # Inductor adds the 1 in fp32 inside its kernel: so does the loader, unrounded
            absorbed.append(scale)
            scale = one_plus
        norm = norm_call(node, x, x_value)
        if norm is None:
            return None
        kind, source, weight, bias, eps = norm
        absorbed.append(node)
        t = through_widening_casts(source, absorbed)
        t_value = fake_value(t)
        if getattr(t_value, "dtype", None) != x_value.dtype or getattr(t_value, "fake_mode", None) is None:
            return None  # t of another dtype, or no fake tensor to derive the statistics' shapes from
        affine = "none" if weight is None else ("w" if bias is None else "wb")
        scaled = "none" if scale is None else ("one_plus_a" if one_plus is not None else "a")
        params = (kind, affine, scaled, "c" if shift is not None else "none")
        statistics = _Statistics(t, kind, eps)
        inputs = [t, *statistics.derived(), *(n for n in (weight, bias, scale, shift) if n is not None)]
        return FoldMatch(FoldSpec(self.kind, params), inputs, absorbed, typed=1)

    def reference(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> torch.Tensor:
        at = _layout(params)
        t = inputs[0]
        rows = t.numel() // t.shape[-1]
        y = t.reshape(rows, -1).float()
        if "mean" in at:
            y = y - inputs[at["mean"]].reshape(rows, 1).float()
        y = y * inputs[at["rstd"]].reshape(rows, 1).float()
        w, b = (inputs[at[name]].reshape(-1) if name in at else None for name in ("w", "b"))
        y = _multiply_add(y, w, b)
        a, c = (_per_row(inputs[at[name]], rows) if name in at else None for name in ("a", "c"))
        if a is not None and params[2] == "one_plus_a":
            a = 1.0 + a.float()
        return _multiply_add(y, a, c).to(t.dtype).reshape(t.shape)

    def vjp(self, grad_x: torch.Tensor, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> list:
        """Through the steps in fp32 (the final rounding passes gradients straight); the statistics' gradients flow
        on to t through the graph's nodes that computed them."""
        at = _layout(params)
        t = inputs[0]
        rows = t.numel() // t.shape[-1]
        flat = t.reshape(rows, -1).float()
        centered = flat - inputs[at["mean"]].reshape(rows, 1).float() if "mean" in at else flat
        rstd = inputs[at["rstd"]].reshape(rows, 1).float()
        normed = centered * rstd
        affined = normed * inputs[at["w"]].reshape(-1).float() if "w" in at else normed
        if "b" in at:
            affined = affined + inputs[at["b"]].reshape(-1).float()
        grad = grad_x.reshape(rows, -1).float()
        grads: dict[str, torch.Tensor] = {}
        if "c" in at:
            grads["c"] = _reduce_to(grad, inputs[at["c"]])
        if "a" in at:
            grads["a"] = _reduce_to(grad * affined, inputs[at["a"]])
            grad = grad * (_per_row(inputs[at["a"]], rows).float() + (1.0 if params[2] == "one_plus_a" else 0.0))
        if "b" in at:
            grads["b"] = grad.sum(0)
        if "w" in at:
            grads["w"] = (grad * normed).sum(0)
            grad = grad * inputs[at["w"]].reshape(-1).float()
        grads["t"] = grad * rstd
        grads["rstd"] = (grad * centered).sum(-1, keepdim=True)
        if "mean" in at:
            grads["mean"] = -(grad * rstd).sum(-1, keepdim=True)
        return [grads[name].reshape(inputs[index].shape).to(inputs[index].dtype) for name, index in at.items()]

    def loader(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> Loader:
        at = _layout(params)
        rows = inputs[0].shape[0]
        scalars = []
        for name in ("a", "c"):  # rows of x per row of the operand, and its rows (the loader's bound)
            count = inputs[at[name]].shape[0] if name in at else 1
            scalars += [rows // count if name in at else 1, count]
        indices = tuple(at.get(name, 0) for name in ("mean", "rstd", "w", "b", "a", "c"))
        return Loader(_load_normalized, inputs[0].shape[-1], args=(*indices, int(params[2] == "one_plus_a")),
                      scalars=tuple(scalars), aligned=1)  # fmt: skip

    def width(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> int:
        return inputs[0].shape[-1]

    def check(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> None:
        if len(params) != 4 or params[0] not in NORMS or params[1] not in AFFINES or params[2] not in SCALES \
                or params[3] not in ("c", "none"):  # fmt: skip
            raise ValueError(f"norm takes (layer or rms, none or w or wb, one of {SCALES}, c or none), got {params}")
        at = _layout(params)
        if len(inputs) != len(at):
            raise ValueError(f"norm{params} takes {len(at)} inputs ({', '.join(at)}), got {len(inputs)}")
        t = inputs[0]
        k = t.shape[-1]
        rows = t.numel() // k if k else 0
        if t.dtype not in DTYPES.values():
            raise ValueError(f"norm: t must be a float tensor of {tuple(DTYPES)}, got {t.dtype}")
        for name, index in at.items():
            value = inputs[index]
            if not value.is_floating_point() or value.device != t.device:
                raise ValueError(f"norm: {name} must be a float tensor on {t.device}, got {value.dtype} on "
                                 f"{value.device}")  # fmt: skip
            if name in ("mean", "rstd") and (value.shape[-1] != 1 or value.numel() != rows):
                raise ValueError(f"norm: {name} must hold one value per row of t {tuple(t.shape)}, got "
                                 f"{tuple(value.shape)}")  # fmt: skip
            if name in ("w", "b") and (value.shape[-1] != k or value.numel() != k):
                raise ValueError(f"norm: {name} must hold {k} values along its last dim, got {tuple(value.shape)}")
            if name in ("a", "c"):
                count = value.numel() // k if value.shape[-1] == k else 0
                if count == 0 or rows % count:
                    raise ValueError(f"norm: {name} {tuple(value.shape)} does not broadcast over t's rows "
                                     f"{tuple(t.shape)} in blocks of rows")  # fmt: skip

    def describe(self, params: tuple[str, ...]) -> str:
        norm = {"layer": "layer_norm", "rms": "rms_norm"}[params[0]] + ("" if params[1] == "none" else "(affine)")
        scale = {"none": "", "a": "·a", "one_plus_a": "·(1+a)"}[params[2]]
        return norm + scale + ("+c" if params[3] == "c" else "")


class _Statistics:
    """t's row statistics for the loader, built once per graph: mean (layer norm) and rstd, fp32, shaped (…, 1)."""

    def __init__(self, t: torch.fx.Node, kind: str, eps: float):
        self.t, self.kind, self.eps = t, kind, eps
        self._nodes: dict[int, list[torch.fx.Node]] = {}
        value = fake_value(t)
        with value.fake_mode:
            self.values = self._compute(value.float())

    def _compute(self, t: torch.Tensor) -> list[torch.Tensor]:
        if self.kind == "layer":
            var, mean = torch.var_mean(t, dim=-1, keepdim=True, correction=0)
            return [mean, torch.rsqrt(var + self.eps)]
        return [torch.rsqrt((t * t).mean(dim=-1, keepdim=True) + self.eps)]

    def derived(self) -> list[Derived]:
        return [Derived(value, lambda graph, replaced, index=index: self._build(graph, replaced)[index])
                for index, value in enumerate(self.values)]  # fmt: skip

    def _build(self, graph: torch.fx.Graph, replaced: dict) -> list[torch.fx.Node]:
        if id(graph) not in self._nodes:
            call = graph.call_function
            t = graph.call_method("to", (replaced.get(self.t, self.t), torch.float32))
            if self.kind == "layer":
                both = call(torch.var_mean, (t,), {"dim": -1, "keepdim": True, "correction": 0})
                var, mean = call(operator.getitem, (both, 0)), call(operator.getitem, (both, 1))
                nodes = [mean, call(torch.rsqrt, (call(operator.add, (var, self.eps)),))]
            else:
                square_mean = call(torch.mean, (call(operator.mul, (t, t)),), {"dim": -1, "keepdim": True})
                nodes = [call(torch.rsqrt, (call(operator.add, (square_mean, self.eps)),))]
            for node, value in zip(nodes, self.values):
                node.meta["example_value"] = value
            self._nodes[id(graph)] = nodes
        return self._nodes[id(graph)]


def _reduce_to(grad: torch.Tensor, operand: torch.Tensor) -> torch.Tensor:
    """A gradient over x's rows (rows, K) summed to a broadcast operand's rows."""
    count = operand.numel() // operand.shape[-1]
    return grad.reshape(count, -1, grad.shape[-1]).sum(1)
