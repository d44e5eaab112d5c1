"""Sampling shared by the project's class-conditional DiTs (tiny_dit.py, shapes_dit.py): the DDIM schedule they are
trained for, the sampling loop, and calibration inputs made by noising clean images to chosen timesteps."""

from __future__ import annotations

import torch

TRAIN_TIMESTEPS = 1000


def scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2", clip_sample=True)


@torch.no_grad()
def sample(model, labels: torch.Tensor, noise: torch.Tensor, steps: int = 25) -> torch.Tensor:
    """DDIM sampling from `noise` for class `labels`; `model` may be a compiled one. The model sees latents in the
    noise's dtype; the scheduler steps in fp32 (a bf16 model's latents would otherwise round at every step)."""
    sched = scheduler()
    sched.set_timesteps(steps)
    x = noise
    for t in sched.timesteps:
        timestep = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        eps = model(hidden_states=x.to(noise.dtype), timestep=timestep, class_labels=labels, return_dict=False)[0]
        x = sched.step(eps.float(), t, x.float()).prev_sample
    return x.clamp(-1, 1)


def noised_calls(clean: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor, timesteps) -> list[dict]:
    """Forward-call inputs for `calibrate`: `clean` images noised with `noise` to each of `timesteps`."""
    sched = scheduler()
    return [dict(hidden_states=sched.add_noise(clean, noise, torch.tensor([t])),
                 timestep=torch.full((noise.shape[0],), t, dtype=torch.long, device=noise.device),
                 class_labels=labels, return_dict=False) for t in timesteps]  # fmt: skip
