"""examples/generate.py end to end on CPU with tiny random pipelines: built, saved with save_pretrained, loaded back
with from_pretrained (the code path of a real checkpoint), compiled with lynx, timed per step, the image saved."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import generate  # noqa: E402

TINY = ["--steps", "2", "--height", "64", "--width", "64"]


def test_a_saved_tiny_pipeline_loads_back_and_runs_under_lynx(tmp_path, capsys):
    saved = tmp_path / "tiny_flux"
    built = generate.main(["--pipeline", "flux", "--backend", "none", *TINY, "--save-tiny", str(saved),
                           "--out", str(tmp_path / "built.png")])  # fmt: skip
    assert (saved / "model_index.json").exists() and (saved / "transformer").is_dir()

    loaded = generate.main(["--pipeline", "flux", "--checkpoint", str(saved), "--backend", "none", *TINY,
                            "--out", str(tmp_path / "loaded.png")])  # fmt: skip
    images = [np.asarray(Image.open(run["out"])) for run in (built, loaded)]
    assert images[0].shape == (64, 64, 3) and np.array_equal(images[0], images[1])  # the same weights, exactly

    # Inductor's code generation is the rest of the suite's business: compiler="eager" keeps this test short.
    lynx = generate.main(["--pipeline", "flux", "--checkpoint", str(saved), "--backend", "lynx", *TINY,
                          "--options", '{"compiler": "eager"}', "--out", str(tmp_path / "lynx.png")])  # fmt: skip
    assert len(lynx["steps"]) == 2 and all(step > 0 for step in lynx["steps"]) and lynx["total"] >= sum(lynx["steps"])
    assert lynx["report"].sparse_layers and lynx["report"].sparse_flop_share > 0.9
    image = np.asarray(Image.open(lynx["out"]))
    assert image.shape == (64, 64, 3) and not np.array_equal(image, images[0])  # pruned: close, but not equal
    printed = capsys.readouterr().out
    assert "step 1 (compiles the transformer on first use)" in printed and "lynx: " in printed


@pytest.mark.parametrize("pipeline", sorted(generate.PIPELINES))
def test_every_pipeline_builds_tiny_and_generates(pipeline, tmp_path):
    frames = ["--frames", "2"] if generate.PIPELINES[pipeline].video else []
    run = generate.main(["--pipeline", pipeline, "--backend", "none", "--steps", "1", "--height", "32",
                         "--width", "32", *frames, "--out", str(tmp_path / "out.png")])  # fmt: skip
    image = np.asarray(Image.open(run["out"]))
    assert image.shape[0] == 32 and image.shape[1] >= 32 and np.isfinite(image).all()
    assert run["report"].layers == [] and len(run["steps"]) == 1  # no lynx: nothing to report
