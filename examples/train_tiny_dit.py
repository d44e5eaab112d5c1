"""Train the project's tiny DiT on upscaled sklearn digits (seeded, reproducible) and save the checkpoint.

    python examples/train_tiny_dit.py [--steps 6000] [--out examples/checkpoints/tiny_dit_digits.safetensors]

The committed checkpoint: `--steps 6000` on an H100 (device tool, 2026-11-24, torch 2.11): 130 s, final loss
0.036, 96% of 100 samples classified as their conditioned class.

Standard DDPM objective (predict the noise, MSE, cosine schedule), AdamW, batch 128, EMA of the weights (what is
saved). Runs on CUDA when there is one, else CPU. Prints the loss and, at the end, the class accuracy of 100 samples.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from tiny_dit import CHECKPOINT, TRAIN_TIMESTEPS, build_model, load_digits_16, sample, sample_quality  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images, labels = (t.to(device) for t in load_digits_16())
    model = build_model().to(device).train()
    ema = copy.deepcopy(model).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=args.steps, pct_start=0.05)
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2")
    generator = torch.Generator(device=device).manual_seed(0)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(images), (args.batch,), device=device, generator=generator)
        clean, label = images[index], labels[index]
        noise = torch.randn(clean.shape, device=device, generator=generator)
        t = torch.randint(0, TRAIN_TIMESTEPS, (args.batch,), device=device, generator=generator)
        noisy = noise_schedule.add_noise(clean, noise, t)
        predicted = model(hidden_states=noisy, timestep=t, class_labels=label, return_dict=False)[0]
        loss = F.mse_loss(predicted, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 0.01 if step > 200 else 1.0)
        if step % 100 == 0 or step == args.steps:
            elapsed = time.perf_counter() - started
            print(f"step {step}/{args.steps}  loss {loss.item():.4f}  {elapsed:.0f} s", flush=True)

    from safetensors.torch import save_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, str(args.out))
    check_labels = torch.arange(100, device=device) % 10
    noise = torch.randn(100, 1, 16, 16, device=device, generator=torch.Generator(device=device).manual_seed(1))
    quality = sample_quality(sample(ema, check_labels, noise), check_labels)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB); class accuracy of 100 samples: "
          f"{quality['class_accuracy']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
