"""Calling `lynx::sparse_linear` directly in tests: its tensors plus a plan built from plain keywords."""

import torch

from lynx_compile.folds import FoldSpec
from lynx_compile.method import Method
from lynx_compile.ops import sparse_linear_args
from lynx_compile.plan import SparseLinearPlan


def plan(path="simulate", *, fold="identity()", n=2, m=4, norm=True, min_tokens=0, rows=1, **params):
    return SparseLinearPlan(path, Method(n, m, norm, min_tokens), FoldSpec.decode(fold), rows,
                            tuple(sorted(params.items())))  # fmt: skip


def sparse_linear_call(inputs, weight, bias=None, lora=None, **plan_options):
    """The op's positional arguments for `inputs` (a tensor or a list) and a plan from `plan_options`."""
    inputs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    return sparse_linear_args(inputs, weight, bias, lora, plan(**plan_options))


def sparse_linear(inputs, weight, bias=None, lora=None, **plan_options):
    return torch.ops.lynx.sparse_linear(*sparse_linear_call(inputs, weight, bias, lora, **plan_options))
