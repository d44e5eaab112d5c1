"""What a sparse path is: one way to run a sparsified linear, with everything about it in one module.

A path (`SparsePath`) owns:
- `unavailable_reason`: why it cannot run a layer here (device, dtype, its shape rules and multiples), or None;
- `tune`: for a path measured against dense, its settings for a shape and its time (`measurements.py` does the
  dense side, the caching and the storing); the settings become the plan's `params`;
- `forward`: the op's body on this path, from the op's tensors and its `SparseLinearPlan`; `forward_group`, the
  same for a group of sibling linears that read one x (`lynx::sparse_linear_group`, or
  `lynx::float8_sparse_linear_group` on a float8 path), for a path with `groups`;
- `lower`: what Inductor's post-grad pass replaces the op by (by default `forward`, traced, so that Inductor sees
  the parts: the GEMM, the kernels' ops, the epilogue it fuses);
- `source_files`: the files whose content decides what it emits (Inductor's FX graph cache key).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Sequence

import torch

from ..folds import IDENTITY, FoldSpec
from ..kernels.prune_compress_24 import COMPRESSED_DTYPES, K_MULTIPLE
from ..method import Lora, Method
from ..plan import SparseLinearPlan

Timer = Callable[[Callable[[], object]], float]  # ms per call of a function (CUDA-graph replays or host time)


@dataclass(frozen=True)
class Workload:
    """One sparsified layer as the speed rule times it: sizes, dtype, device, graph mode, the producer folded into it
    (timed with the layer on both sides) and its correction's rank."""

    tokens: int  # M (a symbolic M at its example value)
    in_features: int  # K
    out_features: int  # N
    dtype: torch.dtype
    device: torch.device
    cuda_graphs: bool
    fold: FoldSpec = IDENTITY
    input_widths: tuple[int, ...] = ()  # the fold's inputs' widths; () for x itself
    lora_rank: int = 0
    out_splits: tuple[int, ...] = ()  # a sibling group: each member's N (summing to out_features); () for one layer
    packed: bool = False  # a group asked to run as one GEMM over its packed weights (option pack_siblings)
    float8: bool = False  # a torchao float8 layer (`lynx_compile.float8`): timed against rowwise FP8 dense
    # The fold's producer written out before the op (one kernel, timed with the layer) and x read as it is, instead
    # of applied on load: the alternative a float8 layer or a folded norm is also measured with (`decide_linears`);
    # dense unchanged
    written: bool = False
    # The fold's inputs' rows where they are not one per token (a norm's per-sample modulation); () for all M
    input_rows: tuple[int, ...] = ()

    @property
    def members(self) -> tuple[int, ...]:
        """Each member's N: (out_features,) for one layer."""
        return self.out_splits or (self.out_features,)

    def with_tokens(self, tokens: int) -> Workload:
        rows = tuple(tokens if rows == self.tokens else rows for rows in self.input_rows)
        return replace(self, tokens=tokens, input_rows=rows)

    def _rows(self) -> tuple[int, ...]:
        return self.input_rows or (self.tokens,) * len(self.input_widths or (self.in_features,))

    def describe(self) -> str:
        """The workload as a stable string (part of the measurement cache key)."""
        widths = ",".join(str(width) if rows == self.tokens else f"{rows}x{width}"
                          for rows, width in zip(self._rows(), self.input_widths or (self.in_features,)))
        graphs = "graphs" if self.cuda_graphs else "no-graphs"
        dtype = str(self.dtype).removeprefix("torch.")
        outputs = "+".join(map(str, self.members))
        return (f"{self.tokens}x{self.in_features}->{outputs} {dtype} {graphs} "
                f"fold={self.fold.encode()}[{widths}] lora={self.lora_rank}" + (" packed" if self.packed else "")
                + (" float8" if self.float8 else "") + (" written" if self.written else ""))

    def example(self) -> tuple[list[torch.Tensor], torch.Tensor, Lora]:
        """Random inputs of the fold, weight and correction for this workload: fixed seed, never zeros."""
        generator = torch.Generator(device=self.device).manual_seed(0)

        def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return torch.randn(*shape, device=self.device, dtype=self.dtype, generator=generator) * scale

        # A group's weights are row blocks of one (N, K) tensor: each contiguous, as separate parameters are.
        inputs = [randn(rows, width) for rows, width in zip(self._rows(), self.input_widths or (self.in_features,))]
        k, n = self.in_features, self.out_features
        weight = randn(n, k, scale=k**-0.5)
        lora = (randn(n, self.lora_rank, scale=n**-0.5), randn(self.lora_rank, k, scale=k**-0.5)) \
            if self.lora_rank else None  # fmt: skip
        return inputs, weight, lora


@dataclass(frozen=True)
class Measurement:
    """A path's time against dense for one workload, with the settings it was measured with (its plan's params):
    `sparse_ms` as the layer runs in a compiled model, and `epilogue_ms`, the pass over Y that applies the norm scale
    outside the path's kernels (0 where its kernel applies it), which Inductor may or may not fuse into the
    consumer."""

    path: str
    params: tuple[tuple[str, Any], ...]
    dense_ms: float
    sparse_ms: float
    tokens: int  # M as timed (a path may time a symbolic M at a multiple it needs)
    epilogue_ms: float = 0.0

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms

    @property
    def standalone_ms(self) -> float:
        """The layer with its norm scale applied, fused or not: how paths compare with each other."""
        return self.sparse_ms + self.epilogue_ms

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "params": dict(self.params), "dense_ms": self.dense_ms,
                "sparse_ms": self.sparse_ms, "tokens": self.tokens, "epilogue_ms": self.epilogue_ms}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        return cls(str(data["path"]), tuple(sorted(dict(data["params"]).items())), float(data["dense_ms"]),
                   float(data["sparse_ms"]), int(data["tokens"]), float(data.get("epilogue_ms", 0.0)))  # fmt: skip


def tensor_core_reason(workload: Workload, method: Method, n_multiple: int) -> str | None:
    """Why 2:4 sparse tensor cores cannot take the layer's method, dtype or sizes (K a multiple of the compressor's
    64, each member's N of `n_multiple`), or None: the rule every hardware path shares."""
    if (method.n, method.m) != (2, 4):
        return f"{method.n}:{method.m} has no tensor-core path (2:4 only)"
    if workload.dtype not in COMPRESSED_DTYPES:
        return f"dtype {str(workload.dtype).removeprefix('torch.')}: sparse tensor cores take bf16/fp16"
    if workload.in_features % K_MULTIPLE:
        return f"K={workload.in_features} not a multiple of {K_MULTIPLE}"
    if any(n % n_multiple for n in workload.members):
        return f"N={'+'.join(map(str, workload.members))} not a multiple of {n_multiple}"
    return None


class SparsePath(ABC):
    """One way to run `lynx::sparse_linear`. Subclasses live one a module and register in `paths`."""

    name: ClassVar[str]
    execution: ClassVar[str] = "sparse"  # the `execution` option that routes layers here: "sparse" or "simulate"
    row_multiple: ClassVar[int] = 1  # token counts it runs; others fall back to dense at run time
    measured: ClassVar[bool] = True  # chosen by the speed rule (timed against dense), or taken as it is
    groups: ClassVar[bool] = False  # runs sibling groups: `tune` takes a workload with out_splits, `forward_group`
    # runs torchao float8 layers (`lynx::float8_sparse_linear` and its group op, `forward`'s weight a
    # `float8.Float8Weight`), and those only; False: layers with plain weights (`lynx::sparse_linear`)
    float8: ClassVar[bool] = False
    # its `forward` (and `forward_group`) calls kernel ops only, so that the float8 ops on this path are lowered into
    # them (`passes/lower_sparse_linears.py`): no Python layer of a `custom_op` around each call without CUDA graphs
    lowers_float8: ClassVar[bool] = False
    # `tune` times a `Workload.written` itself (its producer's kernel, then the path on x); False: the measurement
    # times that kernel apart and tunes the path on x as given
    times_written: ClassVar[bool] = False

    def runs_on(self, device: torch.device) -> bool:
        """Whether the path can run anything on this device (decides `execution="auto"`)."""
        return True

    def unavailable_reason(self, workload: Workload, method: Method) -> str | None:
        """Why this path cannot run the layer, as a reason a user can act on; None when it can."""
        return None

    def tune(self, workload: Workload, timer: Timer) -> tuple[dict[str, Any], float]:
        """(settings, ms per call) of the path's best variant for the workload, the epilogue left out. For a group
        (`workload.out_splits`), the settings are the path's: ``{"members": [each member's settings]}`` for the
        default `forward_group`; ``"packed": True`` among them where the path runs the group as one GEMM over the
        members' weights (`workload.packed` asks for it), which compiling then packs in one buffer."""
        raise NotImplementedError(f"the {self.name} path is not measured")

    @abstractmethod
    def forward(self, inputs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, lora: Lora,
                plan: SparseLinearPlan) -> torch.Tensor:  # fmt: skip
        """y for x = the plan's fold of `inputs` (leading shape of inputs[0], N features)."""

    def lower(self, inputs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, lora: Lora,
              plan: SparseLinearPlan) -> torch.Tensor:  # fmt: skip
        """What Inductor's lowering traces in place of the op; the op's own body unless a path needs otherwise."""
        return self.forward(inputs, weight, bias, lora, plan)

    def unfused_epilogue_ms(self, workload: Workload, timer: Timer) -> float:
        """ms of the pass over Y (each member's, for a group) that applies the norm scale outside the path's kernels,
        which `tune` leaves out; 0 for a path whose kernel applies it."""
        return 0.0

    def forward_group(self, inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                      biases: Sequence[torch.Tensor | None], plan: SparseLinearPlan) -> list[torch.Tensor]:  # fmt: skip
        """Each member's y for x = the plan's fold of `inputs`. By default each member runs on its own; a path that
        shares work between them (one prune and compress for all) overrides this."""
        return [self.forward(inputs, weight, bias, None, plan.member(index))
                for index, (weight, bias) in enumerate(zip(weights, biases))]  # fmt: skip

    def lower_group(self, inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                    biases: Sequence[torch.Tensor | None], plan: SparseLinearPlan) -> list[torch.Tensor]:  # fmt: skip
        return self.forward_group(inputs, weights, biases, plan)

    def describe(self, params: dict[str, Any]) -> str:
        """The path with its settings, for reasons (`explain`)."""
        return self.name

    def source_files(self) -> tuple[str, ...]:
        return (inspect.getfile(type(self)),)
