"""The lynx passes across diffusers' transformer classes beyond the zoo (tests/zoo_family_*.py: Sana, Lumina, AuraFlow,
Chroma, FLUX.2, HiDream, CogView, HunyuanDiT, OmniGen, Bria, PRX, Z-Image, HunyuanVideo, LTX, CogVideoX, Mochi,
Allegro, Latte, SkyReels, Wan VACE, Cosmos, Kandinsky 5, EasyAnimate, Stable Audio...).

Each compiles under lynx as a user would (`torch.compile(model, backend="lynx")`, graph breaks allowed: several of
these models break Dynamo's graph themselves), with ``strict=True`` so that a lynx pass failing on a graph fails the
test instead of falling back, and ``compiler="eager"``: the lynx passes run as with Inductor, without Inductor's
code generation (seconds a model) or its rounding (which flips 2:4 choices at near-ties, and Kandinsky 5's bf16
round trips in its rotary embedding). It must prune some layers and compute exactly what the method applied by hand
computes on the layers it reports sparse (`run_with_pruning_hooks`, by full name).
"""

import pytest
import torch
from test_zoo import relative_error, run_with_pruning_hooks
from zoo_family_image import FAMILY as IMAGE
from zoo_family_video import FAMILY as VIDEO

import lynx_compile

pytestmark = pytest.mark.slow

FAMILY = {**IMAGE, **VIDEO}


def first_output(out) -> torch.Tensor:
    """The sample of a return_dict=False call, or the tensor itself; Z-Image returns a list of per-sample tensors."""
    sample = out[0] if isinstance(out, tuple) else out
    return torch.stack(list(sample)) if isinstance(sample, (list, tuple)) else sample


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_each_transformer_prunes_its_layers_exactly_as_the_method_applied_by_hand(name):
    build, make_inputs = FAMILY[name]
    model, inputs = build(), make_inputs(0)
    torch.compiler.reset()
    options = {"execution": "simulate", "compiler": "eager", "strict": True}
    with torch.no_grad(), lynx_compile.collect_reports() as report:
        out = first_output(torch.compile(model, backend="lynx", options=options)(**inputs))
    sparse = {layer.name for layer in report.sparse_layers}
    linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert sparse and sparse <= linears, report  # full names of the model's own modules
    reference = first_output(run_with_pruning_hooks(model, inputs, sparse))
    assert torch.isfinite(out).all() and relative_error(out, reference) < 1e-4, relative_error(out, reference)
