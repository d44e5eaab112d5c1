"""`SparseLinearPlan`: everything `lynx::sparse_linear` needs besides its tensors, as one structured argument.

The op's schema is (inputs, weight, bias, lora_a, lora_b, plan): the tensors, then this record encoded as a string
(custom ops take no dataclasses). It says which sparse path runs the layer and with what path-specific settings
(`params`: cuSPARSELt's algorithm today; a CUTLASS tile, FP8 scale modes later), the method's settings, and how the
op's inputs make x (the producer fold). Adding a path or a fold adds no argument to the op.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .folds import IDENTITY, FoldSpec
from .method import Method


@dataclass(frozen=True)
class SparseLinearPlan:
    path: str  # a registered sparse path (`lynx_compile.paths`)
    method: Method = Method()
    fold: FoldSpec = IDENTITY
    row_multiple: int = 1  # the path runs only token counts that are multiples of this (else dense at run time)
    params: tuple[tuple[str, Any], ...] = ()  # the path's own settings, JSON scalars

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def member(self, index: int) -> SparseLinearPlan:
        """A sibling group's plan (params ``{"members": [settings, ...]}``) as member `index`'s own plan; a plan
        without per-member settings (the simulate path's) serves every member as it is."""
        members = self.param("members")
        return self if members is None else replace(self, params=tuple(sorted(members[index].items())))

    def encode(self) -> str:
        data = {"path": self.path, **self.method.to_dict(), "fold": self.fold.encode(), "rows": self.row_multiple,
                "params": dict(self.params)}  # fmt: skip
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def decode(text: str) -> SparseLinearPlan:
        data = json.loads(text)
        method = Method(data["n"], data["m"], data["norm_compensation"], data["min_tokens"])
        return SparseLinearPlan(data["path"], method, FoldSpec.decode(data["fold"]), data["rows"],
                                tuple(sorted(data["params"].items())))  # fmt: skip

    def sparse_at(self, rows: int) -> bool:
        """At run time: is a call with `rows` token rows pruned (else it runs dense, uncorrected)?"""
        return rows >= self.method.min_tokens and rows % self.row_multiple == 0

    def settled(self, rows: int | torch.SymInt) -> bool:
        """At compile time: is `sparse_at` provably true for every value of a (possibly symbolic) row count? Only
        then can the op be lowered into its parts; otherwise it stays opaque and decides at run time."""
        if not statically_known_true(rows >= self.method.min_tokens):
            return False
        return self.row_multiple == 1 or bool(statically_known_true(rows % self.row_multiple == 0))
