"""examples/ddim.py's sampler: classifier-free guidance as DiTPipeline combines it, checked on a model whose ε is
known in closed form."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
from ddim import sample, scheduler  # noqa: E402

NULL = 10


class LabelEcho(torch.nn.Module):
    """ε = x/2 + a per-label offset, so the conditional and unconditional predictions differ by a known amount; it
    records the labels and batch of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, hidden_states, timestep, class_labels, return_dict):
        self.calls.append((hidden_states.shape[0], class_labels.clone(), timestep.clone()))
        offset = (class_labels.float() - 4.5) / 10
        return (hidden_states / 2 + offset[:, None, None, None],)


def reference(labels, noise, steps, guidance):
    """The same loop written out: ε∅ + g·(ε_c − ε∅) with each ε from the closed form."""
    sched = scheduler()
    sched.set_timesteps(steps)
    x = noise
    for t in sched.timesteps:
        conditional = x / 2 + ((labels.float() - 4.5) / 10)[:, None, None, None]
        unconditional = x / 2 + (NULL - 4.5) / 10
        x = sched.step(unconditional + guidance * (conditional - unconditional), t, x).prev_sample
    return x.clamp(-1, 1)


@pytest.mark.parametrize("guidance", [1.0, 2.5, 4.0])
def test_guidance_combines_conditional_and_unconditional_predictions(guidance):
    labels = torch.tensor([0, 3, 9])
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(int(guidance * 10)))
    model = LabelEcho()
    out = sample(model, labels, noise, steps=4, guidance=guidance, null_label=NULL)
    torch.testing.assert_close(out, reference(labels, noise, 4, guidance), rtol=1e-5, atol=1e-6)
    assert len(model.calls) == 4  # one call a step, the batch doubled when guided
    for batch, called_labels, timestep in model.calls:
        assert batch == (3 if guidance == 1.0 else 6) and timestep.shape == (batch,)
        expected = labels if guidance == 1.0 else torch.cat([labels, torch.full((3,), NULL)])
        assert torch.equal(called_labels, expected)


def test_guidance_needs_the_null_label():
    with pytest.raises(ValueError, match="null_label"):
        sample(LabelEcho(), torch.tensor([1]), torch.randn(1, 1, 4, 4), steps=2, guidance=3.0)
