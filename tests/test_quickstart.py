"""examples/quickstart.py, small: it runs, prints the table a user reads, and writes the grid of samples."""

import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import quickstart  # noqa: E402

VARIANTS = ("dense", "lynx 2:4 (naive)", "lynx 2:4 + norm", "lynx calibrated policy")


def test_quickstart_prints_explain_calibration_quality_and_times(tmp_path, capsys):
    out = tmp_path / "samples.png"
    quickstart.main(["--samples", "10", "--steps", "2", "--out", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("explain: ") and "linear modules sparsified" in printed[0]
    assert any(line.startswith("calibrate: ") and "within target 0.2" in line for line in printed)
    header = next(i for i, line in enumerate(printed) if line.startswith("variant"))
    assert header > 0 and "class acc" in printed[header] and "s/step" in printed[header]
    rows = printed[header + 1 : header + 1 + len(VARIANTS)]
    assert [row[:24].strip() for row in rows] == list(VARIANTS)
    assert rows[0].split()[1] == "0.0%" and all(float(row.split()[-1]) > 0 for row in rows)  # s/step measured
    assert any("sm_90" in line for line in printed)  # where the speed is
    grid = Image.open(out)
    assert grid.size[1] == len(VARIANTS) * 16 * 3  # a row of 16-pixel digits, zoomed 3×, per variant
