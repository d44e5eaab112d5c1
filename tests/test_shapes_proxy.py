"""The bigger proxy's pieces (examples/shapes.py, shapes_dit.py, train_shapes_dit.py): the generated data, the
classifier behind its quality function, and the training script on a CPU at toy size."""

import os
import subprocess
import sys

import pytest
import torch

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

from sample_metrics import against_reference  # noqa: E402
from shapes import CLASSES, make_shapes  # noqa: E402
from shapes_dit import CLASSIFIER, classify, sample_quality  # noqa: E402


def test_shapes_are_seeded_balanced_and_in_range():
    images, labels = make_shapes(40, seed=3)
    again, _ = make_shapes(40, seed=3)
    other, _ = make_shapes(40, seed=4)
    assert torch.equal(images, again) and not torch.equal(images, other)
    assert images.shape == (40, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(torch.bincount(labels, minlength=len(CLASSES)), torch.full((len(CLASSES),), 4))
    # every image shows something: foreground and background differ, so no image is flat
    assert (images.flatten(1).std(dim=1) > 0.1).all()


# Trained on a GPU by train_shapes_dit.py (a CPU takes too long to train it well enough), then shipped.
needs_classifier = pytest.mark.skipif(not CLASSIFIER.exists(), reason="the shipped classifier is missing")


@needs_classifier
def test_the_classifier_tells_fresh_shapes_apart():
    images, labels = make_shapes(500, seed=123_456)  # drawn after its training: not one seen
    accuracy = (classify(images) == labels).float().mean().item()
    assert accuracy >= 0.95, accuracy


@needs_classifier
def test_quality_rewards_the_right_class():
    images, labels = make_shapes(200, seed=77)
    wrong = (labels + 1 + torch.arange(200) % (len(CLASSES) - 1)) % len(CLASSES)  # never the drawn class
    assert sample_quality(images, labels)["class_accuracy"] >= 0.95
    assert sample_quality(images, wrong)["class_accuracy"] <= 0.05


def test_closeness_to_the_reference_is_psnr_and_relative_error():
    images, _ = make_shapes(50, seed=77)
    same = against_reference(images, images)
    assert same["psnr_db"] == float("inf") and same["relative_error"] == 0
    noisy = images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    close, far = against_reference(noisy, images), against_reference(images.flip(0), images)
    assert close["psnr_db"] > far["psnr_db"] and close["relative_error"] < far["relative_error"]
    assert close["psnr_db"] == pytest.approx(10 * torch.log10(4 / (noisy - images).square().mean()).item(), rel=1e-5)
    assert close["relative_error"] == pytest.approx(((noisy - images).norm() / images.norm()).item(), rel=1e-5)


@pytest.mark.slow
def test_the_training_script_runs_and_saves_a_bf16_checkpoint_that_loads(tmp_path):
    out = tmp_path / "shapes_dit.safetensors"
    command = [sys.executable, os.path.join(EXAMPLES, "train_shapes_dit.py"), "--steps", "2", "--batch", "4",
               "--samples", "10", "--out", str(out), "--classifier-steps", "2", "--save-every", "1",
               "--classifier", str(tmp_path / "classifier.safetensors")]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    from safetensors.torch import load_file
    from shapes_dit import load_model

    stored = load_file(str(out))
    assert {value.dtype for value in stored.values()} == {torch.bfloat16}
    model = load_model(out)
    assert sum(p.numel() for p in model.parameters()) > 10_000_000  # the proportions of a real DiT, not a toy
    assert "class accuracy of 10 samples, guidance 1.0" in run.stdout and "classifier: 2 steps" in run.stdout
    assert (tmp_path / "classifier.safetensors").exists()
    # the snapshot of step 1 beside the final weights, none of step 2 (the final file is that one)
    assert load_model(tmp_path / "shapes_dit.step1.safetensors") is not None
    snapshots = sorted(p.name for p in tmp_path.glob("shapes_dit*"))
    assert snapshots == ["shapes_dit.safetensors", "shapes_dit.step1.safetensors"]


@pytest.mark.slow
def test_a_stopped_run_goes_on_from_its_state(tmp_path):
    """--stop-minutes ends a call early with the whole state saved; --resume continues that run, optimizer and
    schedule included, to its own step count."""
    state = tmp_path / "run.pt"
    command = [sys.executable, os.path.join(EXAMPLES, "train_shapes_dit.py"), "--steps", "4", "--batch", "2",
               "--samples", "2", "--out", str(tmp_path / "shapes_dit.safetensors"), "--classifier-steps", "2",
               "--classifier", str(tmp_path / "classifier.safetensors"), "--state", str(state)]  # fmt: skip
    first = subprocess.run([*command, "--stop-minutes", "0.0001"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped at step 1/4" in first.stdout and torch.load(state, weights_only=True)["step"] == 1
    second = subprocess.run([*command, "--resume", "--steps", "9"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed at step 1/4" in second.stdout and "step 4/4" in second.stdout  # the saved count, not --steps
    saved = torch.load(state, weights_only=True)
    assert saved["step"] == 4 and saved["schedule"]["last_epoch"] == 4
    assert {float(entry["step"]) for entry in saved["optimizer"]["state"].values()} == {4.0}  # Adam went on counting
    refused = subprocess.run([*command[:-2], "--resume"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "need --state" in refused.stderr


@pytest.mark.slow
def test_the_training_script_trains_data_parallel_under_torchrun_and_rank_0_alone_saves(tmp_path):
    out = tmp_path / "shapes_dit.safetensors"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               os.path.join(EXAMPLES, "train_shapes_dit.py"), "--steps", "3", "--batch", "2", "--samples", "4",
               "--out", str(out), "--classifier", str(CLASSIFIER)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("step 3/3") == 1 and run.stdout.count("saved ") == 1  # rank 0 prints and saves
    assert "class accuracy of 4 samples, guidance 1.0" in run.stdout
    from safetensors.torch import load_file

    assert {value.dtype for value in load_file(str(out)).values()} == {torch.bfloat16}
