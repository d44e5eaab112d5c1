"""Calibration's trajectory objective: bound the error of what the user samples, not of one model call.

A *sampler* is what the user samples with, as a function of the model: ``sample(model) -> tensor``, e.g. a closure
running the scheduler loop from fixed noise with fixed steps and guidance (`pipeline_sampler` makes one of a
diffusers pipeline). Its result with the dense model is the reference; with some linears sparsified (forward hooks
on those modules, so whoever calls them is covered, the sampler's loop included), the relative L2 error of its
result against the reference is what ``calibrate(..., sampler=...)`` bounds by `target`; PSNR is reported beside it.

Why: the one-step output error at a few timesteps is a proxy, and it breaks once the errors of many steps compound.
On the project's trained tiny DiT a rank-8 LoRA policy within a one-step target of 0.2 sampled at 18.6 dB PSNR
against the dense samples, where the uncorrected policy at the same target sampled at 25.3 dB (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .checks import OptionError, check_int
from .eager import Call, relative_error, sparsified
from .lora import LoraAdapter
from .method import Method
from .progress import Progress

Sampler = Callable[[torch.nn.Module], torch.Tensor]

# Two dense runs of a sampler must agree to within this fraction of the target: a sampler that draws fresh noise
# each run measures its own noise, not the sparsification. The slack is for nondeterministic kernels (GPU atomics).
DENSE_DRIFT_SHARE = 0.1


def psnr_db(out: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR of `out` against `reference`, the peak being the reference's own range (max − min): the sampler's output
    may be latents or images in any range, and the reference is the one range calibrate knows."""
    reference = reference.double()
    mse = (out.double() - reference).square().mean().item()
    peak = (reference.max() - reference.min()).item()
    if mse == 0:
        return math.inf
    return 10 * math.log10(max(peak, 1e-30) ** 2 / mse)


def _detached_copy(value: Any) -> Any:
    """A captured call's arguments, copied: a sampler may update its latents in place after the call."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _detached_copy(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_detached_copy(item) for item in value)
    return value


class Trajectory:
    """A sampler's dense result, and the sampled error of any set of sparsified layers against it.

    Building one runs the sampler twice with the dense model (the reference, and a check that the sampler is
    deterministic); `capture=True` also keeps the model calls of the first run, as calibration samples.
    """

    def __init__(self, model: torch.nn.Module, sampler: Sampler, target: float, progress: Progress,
                 capture: bool = False) -> None:  # fmt: skip
        self.model, self.sampler, self.progress = model, sampler, progress
        self.runs = 0
        self.captured: list[Call] = []
        self.reference: torch.Tensor | None = None
        self.reference, self.calls_per_run = self._run("with the dense model", capture)
        if not bool(torch.isfinite(self.reference).all()):
            raise ValueError("calibrate: the sampler's result with the dense model holds NaN or Inf; calibration "
                             "measures errors relative to it, so it must be finite")  # fmt: skip
        progress.expect(2 * self.calls_per_run)  # the first run counted its calls before their number was known
        again, _ = self._run("with the dense model, a second time")
        drift = relative_error(again, self.reference)
        if not drift <= DENSE_DRIFT_SHARE * target:
            raise ValueError(f"calibrate: the sampler is not deterministic: two runs with the dense model differ by "
                             f"{drift:.3g} (relative L2), more than {DENSE_DRIFT_SHARE} of target {target}; give it "
                             "fixed noise (the same latents, or a generator seeded anew, every run)")  # fmt: skip

    def _run(self, what: str, capture: bool = False) -> tuple[torch.Tensor, int]:
        calls = 0

        def count(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            nonlocal calls
            calls += 1
            self.progress.advance()
            if capture:
                self.captured.append((_detached_copy(args), _detached_copy(kwargs)))

        handle = self.model.register_forward_pre_hook(count, with_kwargs=True)
        try:
            with torch.no_grad():
                out = self.sampler(self.model)
        finally:
            handle.remove()
        self.runs += 1
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"calibrate: the sampler must return a tensor (the sampled result); run {what}, it "
                             f"returned {type(out).__name__}")  # fmt: skip
        if calls == 0:
            raise ValueError("calibrate: the sampler never called the model it was given; it must run that module "
                             "eagerly (not a compiled or another copy), since calibration sparsifies its linears")
        if self.reference is not None and out.shape != self.reference.shape:
            raise ValueError(f"calibrate: the sampler's result changed shape: {tuple(self.reference.shape)} with the "
                             f"dense model, {tuple(out.shape)} run {what}")  # fmt: skip
        return out.detach(), calls

    def error(self, layers: dict[str, torch.nn.Linear], method: Method,
              adapters: dict[str, LoraAdapter]) -> tuple[float, float]:  # fmt: skip
        """(relative L2 error, PSNR dB) of the sampled result with `layers` sparsified (corrected where `adapters`
        has one) against the dense one; a non-finite result is an infinite error, so it never fits a target."""
        with sparsified(layers, method, adapters):
            out, _ = self._run(f"with {len(layers)} layer(s) sparsified")
        if not bool(torch.isfinite(out).all()):
            return math.inf, -math.inf
        return relative_error(out, self.reference), psnr_db(out, self.reference)


def check_sampler(sampler: Any) -> None:
    if not callable(sampler):
        raise OptionError(f"lynx option 'sampler' must be a callable sample(model) -> tensor, got {sampler!r} "
                          f"({type(sampler).__name__})")  # fmt: skip


def pipeline_sampler(pipe: Any, *, seed: int = 0, output_type: str = "latent", **call_arguments: Any) -> Sampler:
    """A sampler of a diffusers pipeline (or any callable taking `generator` and `output_type`): every run calls
    ``pipe(**call_arguments, generator=<seeded anew with seed>, output_type=output_type)``, so every run starts from
    the same noise, and returns its result tensor (``.images``, or ``.frames`` for video). ``output_type="latent"``
    (the default) measures the error on the latents and skips decoding; ``"pt"`` measures decoded images.

        sampler = lynx_compile.pipeline_sampler(pipe, prompt="a lynx", num_inference_steps=28, guidance_scale=3.5)
        policy = lynx_compile.calibrate(pipe.transformer, sampler=sampler, target=0.2)
    """
    if not callable(pipe):
        raise TypeError(f"pipeline_sampler takes a diffusers pipeline (or a callable like one), got {pipe!r}")
    check_int("seed", seed, 0)
    if "generator" in call_arguments:
        raise TypeError("pipeline_sampler seeds a generator of its own for every run (seed=); do not pass one")

    def sample(model: torch.nn.Module) -> torch.Tensor:
        transformer = getattr(pipe, "transformer", None)
        if transformer is not None and transformer is not model:
            raise ValueError("pipeline_sampler: the model being calibrated is not this pipeline's transformer; "
                             "calibrate pipe.transformer")  # fmt: skip
        generator = torch.Generator(getattr(pipe, "device", "cpu")).manual_seed(seed)
        out = pipe(**call_arguments, generator=generator, output_type=output_type)
        for field in ("images", "frames"):
            if hasattr(out, field):
                return getattr(out, field)
        return out[0] if isinstance(out, (tuple, list)) else out

    return sample
