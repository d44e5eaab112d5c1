"""The two facts about the folded activations that the FP8 compressor's first read relies on (`RAW_MAX`), checked on
every 16-bit float through the kernels' own formula and torch's: |act(x)| for x < 0 stays below `NEGATIVE_PEAK`;
for x ≥ 0, act(x) reaches the bound from some x on, and no smaller x has a larger act(x) than one reaching it. So a
row's largest |act(x)| is act(its largest x) wherever that reaches the bound. (Not monotone everywhere: under the
interpreter bf16 subnormals come out of GELU larger than some values above them.)"""

import pytest
import torch

from lynx_compile.kernels.activations import ACTIVATIONS, NEGATIVE_PEAK, activate, activation_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def every_value(dtype):
    """Every finite value of a 16-bit float type, ascending."""
    codes = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = codes.view(dtype).float()
    return values[values.isfinite()].unique().to(dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", [name for name in ACTIVATIONS if name != "none"])
def test_negative_inputs_stay_below_the_bound_and_the_rest_never_decreases(name, dtype):
    x = every_value(dtype)
    for activated in (activate(x, name), activation_ref(x, name)):  # the kernels' formula, and torch's
        activated = activated.float()
        negative = x < 0
        assert activated[negative].abs().max() < NEGATIVE_PEAK[ACTIVATIONS[name]]
        # the bound is no looser than it needs to be by more than its margin
        assert activated[negative].abs().max() > NEGATIVE_PEAK[ACTIVATIONS[name]] / 2
        rest = activated[~negative]
        reaching = rest >= NEGATIVE_PEAK[ACTIVATIONS[name]]
        running_max = rest.cummax(0).values
        # once reached, the bound stays reached, and nothing below a value reaching it is larger
        assert reaching.any() and torch.equal(reaching, running_max >= NEGATIVE_PEAK[ACTIVATIONS[name]])
        assert torch.equal(running_max[reaching], rest[reaching])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", [name for name in ACTIVATIONS if name != "none"])
def test_every_value_is_torchs_to_one_rounding(name, dtype):
    # the kernels' formulas (compiled: approximate exponential and division, flushing results below 2^-126 to zero)
    # against torch's on all 2^16 inputs, wherever torch's is finite (its exact GELU overflows from 1.7e38 on, where
    # the kernels' gives x): within one rounding step of the dtype; for GELU below zero, or within 1e-6, where
    # torch's 1 + tanh(u) (or erf) cancels and its own values are off by more than a step
    x = every_value(dtype)
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    step = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps  # a rounding step among subnormals
    expected, activated = activation_ref(x, name).float(), activate(x, name).float()
    negligible = expected.abs() < 2**-100  # may flush to ±0 where compiled (`activations._divide`)
    finite = expected.isfinite()
    assert finite.float().mean() > 0.99
    cancels = (x < 0) & name.startswith("gelu")
    for where, atol in ((finite & ~negligible & ~cancels, step), (finite & cancels, 1e-6)):
        torch.testing.assert_close(activated[where], expected[where], rtol=ulp, atol=atol)
    assert (activated[negligible & ~cancels].abs() <= max(2**-100, step)).all()  # flushed, or a step from 0
