"""Sparse at some denoising steps only: a step schedule for `compile_repeated_blocks(..., steps=schedule)`.

Sensitivity to pruning is not the same at every step of a sampler (benchmarks/RESULTS.md, 2026-11-26: U-shaped on
the trained tiny DiT, where all token layers sparse at steps 10–19 of 25 sampled 2.4 dB closer to dense than the
calibrated per-layer policy at the same share of FLOPs). A `StepSchedule` names the steps that run as the lynx
options say; at the others every block runs dense. Each block region is compiled twice — its lynx options, and
``execution="dense"`` (Inductor alone) — through functions with code objects of their own, as
`lynx_compile.regional` compiles decision patterns: switching between them is a Python call per block, never a
guard failure or a recompile, and each variant keeps its own CUDA graphs.

With a diffusers pipeline the schedule is the step callback, which tells it the step that comes next::

    schedule = lynx_compile.StepSchedule(sparse_steps=range(5, 25))      # dense for the first 5 of 25 steps
    lynx_compile.compile_repeated_blocks(pipe.transformer, options={"policy": policy}, steps=schedule)
    image = pipe(prompt, num_inference_steps=25, callback_on_step_end=schedule).images[0]

In a sampling loop of one's own, ``schedule.at(i)`` before step i's model calls.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any, Callable

from .checks import check_int


class StepSchedule:
    """The denoising steps (0-based, in the order the sampler runs them) at which the compiled blocks run sparse."""

    def __init__(self, sparse_steps: Iterable[int], steps: int | None = None) -> None:
        if isinstance(sparse_steps, (str, bytes)) or not isinstance(sparse_steps, Iterable):
            raise TypeError(f"StepSchedule: sparse_steps must be an iterable of step indices, got {sparse_steps!r}")
        chosen = frozenset(sparse_steps)
        if not all(_step_index(step) is not None for step in chosen):
            raise ValueError(f"StepSchedule: sparse_steps must be step indices ≥ 0, got {sorted(chosen, key=str)}")
        if steps is not None:
            check_int("StepSchedule: steps", steps, minimum=1)
        self.sparse_steps, self.steps = chosen, steps
        self.step = 0

    @property
    def sparse(self) -> bool:
        """Whether the current step runs sparse."""
        return self.step in self.sparse_steps

    def at(self, step: int) -> None:
        """Make `step` the current one (a sampling loop of one's own calls this before the step's model calls)."""
        index = _step_index(step)
        if index is None:
            raise ValueError(f"StepSchedule.at: a step index ≥ 0, got {step!r}")
        self.step = index

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        """diffusers' ``callback_on_step_end``: step `step_index` has run, so the next one is current; after the
        last step, step 0 again (for the next pipeline call). The pipeline's state is handed back untouched."""
        total = getattr(pipe, "num_timesteps", None) or self.steps
        if total is None:
            raise ValueError("StepSchedule: this pipeline does not say how many steps it runs (num_timesteps); "
                             "pass StepSchedule(..., steps=num_inference_steps)")  # fmt: skip
        self.at(0 if step_index + 1 >= total else step_index + 1)
        return callback_kwargs

    def __repr__(self) -> str:
        return f"StepSchedule(sparse_steps={sorted(self.sparse_steps)}, steps={self.steps}, step={self.step})"


def _step_index(step: Any) -> int | None:
    """`step` as a step index (an int ≥ 0, or what stands for one: a numpy int, a 0-d integer tensor), else None."""
    if isinstance(step, bool):
        return None
    try:
        index = operator.index(step)
    except TypeError:
        return None
    return index if index >= 0 else None


def by_step(schedule: StepSchedule, sparse: Callable[..., Any], dense: Callable[..., Any], *args: Any,
            **kwargs: Any) -> Any:  # fmt: skip
    """A block's compiled call under a schedule: the sparse variant at its steps, the dense one at the others."""
    return (sparse if schedule.sparse else dense)(*args, **kwargs)
