"""Sampling shared by the project's class-conditional DiTs (tiny_dit.py, shapes_dit.py): the DDIM schedule they are
trained for, the sampling loop, and calibration inputs made by noising clean images to chosen timesteps."""

from __future__ import annotations

import torch

TRAIN_TIMESTEPS = 1000


def scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2", clip_sample=True)


@torch.no_grad()
def sample(model, labels: torch.Tensor, noise: torch.Tensor, steps: int = 25, guidance: float = 1.0,
           null_label: int | None = None) -> torch.Tensor:  # fmt: skip
    """DDIM sampling from `noise` for class `labels`; `model` may be a compiled one. The model sees latents in the
    noise's dtype; the scheduler steps in fp32 (a bf16 model's latents would otherwise round at every step).
    `guidance` > 1: classifier-free guidance as DiTPipeline does it, one call on the batch doubled (`labels`, then
    `null_label`: the class the model was trained to read as "none", its number of classes), ε = ε∅ + g·(ε_c − ε∅)."""
    if guidance != 1.0 and null_label is None:
        raise ValueError("classifier-free guidance needs the model's null_label")
    sched = scheduler()
    sched.set_timesteps(steps)
    x = noise
    if guidance != 1.0:
        labels = torch.cat([labels, torch.full_like(labels, null_label)])
    for t in sched.timesteps:
        latents = x.to(noise.dtype) if guidance == 1.0 else torch.cat([x, x]).to(noise.dtype)
        timestep = torch.full((latents.shape[0],), int(t), dtype=torch.long, device=x.device)
        eps = model(hidden_states=latents, timestep=timestep, class_labels=labels, return_dict=False)[0].float()
        if guidance != 1.0:
            conditional, unconditional = eps.chunk(2)
            eps = unconditional + guidance * (conditional - unconditional)
        x = sched.step(eps, t, x.float()).prev_sample
    return x.clamp(-1, 1)


def noised_calls(clean: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor, timesteps) -> list[dict]:
    """Forward-call inputs for `calibrate`: `clean` images noised with `noise` to each of `timesteps`."""
    sched = scheduler()
    return [dict(hidden_states=sched.add_noise(clean, noise, torch.tensor([t])),
                 timestep=torch.full((noise.shape[0],), t, dtype=torch.long, device=noise.device),
                 class_labels=labels, return_dict=False) for t in timesteps]  # fmt: skip
