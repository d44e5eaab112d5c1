"""The project's own trained DiT, to measure quality on: model, data, sampling and the quality function.

A class-conditional diffusers `DiTTransformer2DModel` (4 blocks, hidden 128, 16×16×1 images, patch 2: 64 tokens)
trained on scikit-learn's 8×8 digits upscaled to 16×16 (`examples/train_tiny_dit.py`; the checkpoint is
`examples/checkpoints/tiny_dit_digits.safetensors`). Random-weight models have none of the activation statistics
that make activation sparsity work or fail; a trained one, however small, does.

`sample_quality` is the one quality function tests and benchmarks use: the share of samples that a classifier
trained on the real digits assigns to the conditioned class, plus PSNR and relative error against reference samples
(the dense model's, from the same noise).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ddim import TRAIN_TIMESTEPS, noised_calls, sample  # noqa: F401 (sample, TRAIN_TIMESTEPS: this model's)
from sample_metrics import against_reference

CHECKPOINT = Path(__file__).parent / "checkpoints" / "tiny_dit_digits.safetensors"
CONFIG = dict(num_attention_heads=4, attention_head_dim=32, in_channels=1, out_channels=1, num_layers=4,
              sample_size=16, patch_size=2, num_embeds_ada_norm=10)  # fmt: skip
# The label DiT's class embedding reads as "no class" (its training drops 10% of labels to it): for guidance.
NULL_LABEL = CONFIG["num_embeds_ada_norm"]


def load_digits_16() -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 16, 16) in [-1, 1], labels (N,)): sklearn's digits, bilinearly upscaled ×2."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2 - 1
    images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    return images, torch.tensor(digits.target, dtype=torch.long)


def build_model() -> torch.nn.Module:
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(**CONFIG)


def load_model(path: str | Path = CHECKPOINT) -> torch.nn.Module:
    from safetensors.torch import load_file

    model = build_model()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def calibration_inputs(labels: torch.Tensor, noise: torch.Tensor, timesteps=(999, 700, 400, 100)) -> list[dict]:
    """Forward-call inputs at several timesteps: noised real-looking latents for `calibrate`."""
    images, _ = load_digits_16()
    return noised_calls(images[: noise.shape[0]].to(noise.device), labels, noise, timesteps)


@functools.cache
def _classifier():
    from sklearn.linear_model import LogisticRegression

    images, labels = load_digits_16()
    return LogisticRegression(max_iter=2000).fit(images.reshape(len(images), -1).numpy(), labels.numpy())


def sample_quality(samples: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None) -> dict:
    """class_accuracy (classifier trained on the real digits), and against `reference`: PSNR (images in [-1, 1],
    peak-to-peak 2) and relative L2 error."""
    flat = samples.detach().float().cpu().reshape(len(samples), -1).numpy()
    quality = {"class_accuracy": float(np.mean(_classifier().predict(flat) == labels.cpu().numpy()))}
    return quality if reference is None else {**quality, **against_reference(samples, reference)}


def save_config(path: Path) -> None:
    path.write_text(json.dumps(CONFIG, indent=1))
