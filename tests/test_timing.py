"""The speed rule's no-graph clock: host time included, a median of rounds so that one slow round does not decide."""

import time

import torch

from lynx_compile.timing import host_included_ms


def test_host_included_time_is_the_median_round_and_counts_every_call():
    calls = []

    def fn():
        calls.append(None)
        # the warm-up call first, then rounds of 2 calls: a slow round (the machine busy), a typical one, a fast one
        time.sleep(0.03 if len(calls) in (2, 3) else 0.002 if len(calls) in (4, 5) else 0)

    ms = host_included_ms(fn, calls=2, device=torch.device("cpu"), rounds=3)
    assert len(calls) == 1 + 2 * 3
    assert 1.5 <= ms < 10  # the typical round's ≈ 2 ms: the mean would be ≈ 11, the fastest round's ≈ 0
