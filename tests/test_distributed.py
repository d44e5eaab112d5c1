"""Several ranks decide as one: rank 0's measurements reach every rank, also where a rank holds a few tokens more
and where rank 0 fails to measure (torchrun, gloo, two CPU processes)."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_every_rank_takes_rank_zeros_decisions(tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", worker,
               str(tmp_path)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["shared"] == ranks[1]["shared"] == ["sparse", "sparse"]  # rank 0's measurement, everywhere
    assert ranks[0]["tuned_when_shared"] == 2 and ranks[1]["tuned_when_shared"] == 0  # rank 1 never timed
    assert ranks[0]["alone"] == ["sparse", "sparse"] and ranks[1]["alone"] == ["dense", "dense"]  # each its own
    assert ranks[0]["uneven"] == [["sparse", 48], ["sparse", 48]]  # rank 1's 54 tokens take rank 0's measurement
    assert ranks[1]["uneven"] == [["sparse", 54], ["sparse", 54]]
    for rank in ranks:  # rank 0's error reached rank 1 (no hang), and each rank keeps the layers dense, saying why
        assert [decision for decision, _ in rank["failed"]] == ["dense", "dense"]
        assert all("toy: no timer today" in reason for _, reason in rank["failed"]), rank["failed"]
