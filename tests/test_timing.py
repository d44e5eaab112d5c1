"""The speed rule's no-graph clock: host time included, the fastest of its rounds, so that rounds slowed by something
else (the machine busy) do not decide."""

import time

import torch

from lynx_compile.timing import host_included_ms


def test_host_included_time_is_the_fastest_round_and_counts_every_call():
    calls = []

    def fn():
        calls.append(None)
        # the warm-up call first (free), then rounds of 2 calls: a slow round (the machine busy), the calls' own
        # time, a round slowed a little
        time.sleep(0 if len(calls) == 1 else 0.03 if len(calls) in (2, 3) else 0.002 if len(calls) in (4, 5) else 0.008)

    ms = host_included_ms(fn, calls=2, device=torch.device("cpu"), rounds=3)
    assert len(calls) == 1 + 2 * 3
    assert 1.9 <= ms < 5  # the fastest round's ≈ 2 ms: the median's would be ≈ 8, the mean ≈ 13
