"""Every 2:4 group the compressors can meet, for tests that compare them bit for bit with a reference or with
CUTLASS's own compressor."""

import torch


def every_group(dtype: torch.dtype, device: str, tiny: float = 1e-4) -> torch.Tensor:
    """Every group of four members from {0, -0, tiny, 1, -2} (625 groups), 30 to a row, each row ending in two groups
    of magnitude 300 (so that, quantized to e4m3 with the row's scale, `tiny` rounds to zero): every way the kept
    members can be zero, -0.0 or nonzero, at every pair of positions — the cases where CUTLASS's slots are not simply
    the two kept members. Rows of K = 128."""
    members = torch.tensor([0.0, -0.0, tiny, 1.0, -2.0])
    groups = torch.cartesian_prod(*[torch.arange(5)] * 4)
    groups = torch.cat([groups, groups[: -len(groups) % 30]])  # whole rows
    rows = members[groups].reshape(-1, 120)
    large = torch.tensor([300.0, -300.0, 1.0, 1.0, 1.0, 1.0, -300.0, 300.0]).expand(len(rows), 8)
    return torch.cat([rows, large], dim=1).to(dtype=dtype, device=device)
