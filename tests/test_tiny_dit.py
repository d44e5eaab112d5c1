"""The project's trained tiny DiT and the quality function that tests and benchmarks share."""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
from tiny_dit import CHECKPOINT, load_digits_16, load_model, sample, sample_quality  # noqa: E402


def test_quality_of_constructed_cases():
    images, labels = load_digits_16()
    real = sample_quality(images[:200], labels[:200], reference=images[:200])
    assert real["class_accuracy"] > 0.9 and real["psnr_db"] == math.inf and real["relative_error"] == 0
    assert sample_quality(images[:200], (labels[:200] + 1) % 10)["class_accuracy"] < 0.2
    shifted = sample_quality(images[:50] + 0.1, labels[:50], reference=images[:50])
    assert abs(shifted["psnr_db"] - 10 * math.log10(4 / 0.01)) < 1e-3  # MSE 0.01, peak-to-peak 2
    expected = (0.1 * math.sqrt(images[:50].numel())) / images[:50].norm().item()
    assert abs(shifted["relative_error"] - expected) < 1e-4


def test_checkpoint_is_small_and_samples_its_classes():
    assert CHECKPOINT.stat().st_size <= 10 * 2**20
    model = load_model()
    labels = torch.arange(20) % 10
    noise = torch.randn(20, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    samples = sample(model, labels, noise, steps=10)
    assert samples.shape == (20, 1, 16, 16) and torch.isfinite(samples).all()
    assert sample_quality(samples, labels)["class_accuracy"] >= 0.7  # trained: 0.96 at 25 steps on 100 samples
