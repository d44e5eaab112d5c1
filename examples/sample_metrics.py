"""How far samples are from reference samples (the dense model's, from the same noise): the half of the quality
functions that needs no classifier."""

from __future__ import annotations

import numpy as np
import torch


def against_reference(samples: torch.Tensor, reference: torch.Tensor) -> dict:
    """PSNR (images in [-1, 1], peak-to-peak 2; inf where equal) and relative L2 error."""
    diff = samples.float() - reference.float()
    mse = diff.square().mean().item()
    return {"psnr_db": float("inf") if mse == 0 else float(10 * np.log10(4.0 / mse)),
            "relative_error": (diff.norm() / reference.float().norm()).item()}  # fmt: skip
