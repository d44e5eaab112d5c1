"""The bigger trained proxy: a DiT with the proportions of a real one, on procedurally generated shapes.

A class-conditional diffusers `DiTTransformer2DModel` — 8 blocks, hidden 384 (6 heads × 64), MLP 1536, 32×32×3
images, patch 2: 256 tokens — trained on `shapes.make_shapes` (`examples/train_shapes_dit.py`). Its quality
function has the same form as the tiny digits model's (`tiny_dit.sample_quality`): the share of samples a
classifier assigns to the conditioned class, and PSNR / relative error against reference samples. The classifier
is a small CNN trained on fresh shapes (`train_classifier`; its weights, 0.4 MB, go to
`checkpoints/shapes_classifier.safetensors`; `train_shapes_dit.py` trains it first where that file is missing).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddim import TRAIN_TIMESTEPS, noised_calls, sample  # noqa: F401 (sample, TRAIN_TIMESTEPS: this model's)
from sample_metrics import against_reference
from shapes import CLASSES, SIZE, make_shapes

CHECKPOINTS = Path(__file__).parent / "checkpoints"
CHECKPOINT = CHECKPOINTS / "shapes_dit.safetensors"
CLASSIFIER = CHECKPOINTS / "shapes_classifier.safetensors"
CONFIG = dict(num_attention_heads=6, attention_head_dim=64, in_channels=3, out_channels=3, num_layers=8,
              sample_size=SIZE, patch_size=2, num_embeds_ada_norm=len(CLASSES))  # fmt: skip
# The label DiT's class embedding reads as "no class" (its training drops 10% of labels to it): for guidance.
NULL_LABEL = CONFIG["num_embeds_ada_norm"]


def build_model() -> torch.nn.Module:
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(**CONFIG)


def load_model(path: str | Path = CHECKPOINT, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The trained model (stored in bf16) in `dtype`."""
    from safetensors.torch import load_file

    if not Path(path).is_file():  # the checkpoint is not in the repository: train_shapes_dit.py writes it
        raise FileNotFoundError(f"{path}: no trained shapes DiT there; run `python examples/train_shapes_dit.py` first "
                                "(minutes on a GPU), or pass another checkpoint")  # fmt: skip
    model = build_model()
    model.load_state_dict({name: value.to(torch.float32) for name, value in load_file(str(path)).items()})
    return model.to(dtype).eval()


def calibration_inputs(labels: torch.Tensor, noise: torch.Tensor, timesteps=(999, 700, 400, 100)) -> list[dict]:
    """Forward-call inputs at several timesteps, fresh shapes noised: for `calibrate`."""
    clean, _ = make_shapes(noise.shape[0], seed=10_000)
    return noised_calls(clean.to(noise.device, noise.dtype), labels, noise, timesteps)


class ShapeClassifier(nn.Module):
    """Three conv stages and a global average: translation-invariant, as the classes are."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.GELU(),
        )  # fmt: skip
        self.head = nn.Linear(128, len(CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


def train_classifier(steps: int, batch: int = 256, seed: int = 0, device: str = "cpu") -> ShapeClassifier:
    """Fresh shapes at every step (no image is seen twice), drawn on `device`; Adam, cross-entropy."""
    torch.manual_seed(seed)
    classifier = ShapeClassifier().to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
    for step in range(steps):
        images, labels = make_shapes(batch, seed=seed * 1_000_003 + step, device=device)
        loss = F.cross_entropy(classifier(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return classifier.eval()


@functools.cache
def load_classifier(path: Path = CLASSIFIER) -> ShapeClassifier:
    from safetensors.torch import load_file

    classifier = ShapeClassifier()
    classifier.load_state_dict(load_file(str(path)))
    return classifier.eval()


@torch.no_grad()
def classify(images: torch.Tensor, classifier: ShapeClassifier | None = None) -> torch.Tensor:
    """The class of each image (on the CPU), by `classifier` (default: the shipped one)."""
    return (classifier or load_classifier())(images.detach().float().cpu()).argmax(dim=1)


def sample_quality(samples: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None,
                   classifier: ShapeClassifier | None = None) -> dict:  # fmt: skip
    """class_accuracy (by `classifier`, default the shipped one), and against `reference`: PSNR (images in [-1, 1],
    peak-to-peak 2) and relative L2 error."""
    quality = {"class_accuracy": float((classify(samples, classifier) == labels.cpu()).float().mean())}
    return quality if reference is None else {**quality, **against_reference(samples, reference)}
