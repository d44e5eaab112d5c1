"""Progress of the long jobs (`calibrate`, `fit_lora`): a tqdm bar over the model calls they make, as diffusers shows
one over denoising steps, beside the `progress` callback and the INFO log lines they always had."""

from __future__ import annotations

import logging
from typing import Callable

logger = logging.getLogger(__name__)


class Progress:
    """One job's bar (unit: a forward call of the model) and its stage lines.

    `bar=False` hides the bar (as `pipe.set_progress_bar_config(disable=True)` does in diffusers); `callback`, e.g.
    `print`, receives each stage line, which is also logged at INFO."""

    def __init__(self, job: str, callback: Callable[[str], None] | None = None, bar: bool = True) -> None:
        from tqdm.auto import tqdm

        self.job, self.callback = job, callback
        self.bar = tqdm(total=0, desc=f"lynx {job}", unit="call", disable=not bar, dynamic_ncols=True)

    def stage(self, line: str) -> None:
        logger.info("lynx.%s: %s", self.job, line)
        if self.callback is not None:
            self.callback(f"{self.job}: {line}")
        self.bar.set_postfix_str(line, refresh=False)

    def expect(self, calls: int) -> None:
        """Add `calls` model calls to the total (jobs learn their length stage by stage)."""
        self.bar.total += calls
        self.bar.refresh()

    def advance(self, calls: int = 1) -> None:
        self.bar.update(calls)

    def close(self) -> None:
        self.bar.total = self.bar.n  # a bisection may stop before its bound
        self.bar.close()
