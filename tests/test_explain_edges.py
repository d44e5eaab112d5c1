"""explain on a module compiled in place, and on a model whose forward takes an argument called `options`."""

import pytest
import torch
import torch.nn as nn

import lynx_compile


class Proj(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        return self.proj(x)


class WithOptions(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x, options=None):
        return self.proj(x) * (options or {}).get("scale", 1.0)


def test_a_module_compiled_in_place_is_explained():
    model, x = Proj(), torch.randn(24, 16)
    model.compile()
    report = lynx_compile.explain(model, x)
    assert [(layer.name, layer.decision) for layer in report.layers] == [("proj", "sparse")]


def test_a_model_argument_called_options_reaches_the_model():
    model, x = WithOptions(), torch.randn(24, 16)
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("options")),
                                    with_kwargs=True)  # fmt: skip
    report = lynx_compile.explain(model, x, options={"scale": 2.0}, lynx_options={"exclude": ["proj"]})
    assert seen == [{"scale": 2.0}]
    assert [(layer.name, layer.reason) for layer in report.layers] == [("proj", "excluded by 'proj'")]
    seen.clear()
    report = lynx_compile.explain(model, x, options={"scale": 3.0})  # the model's: its forward names it
    assert seen == [{"scale": 3.0}] and report.layers[0].decision == "sparse"


def test_options_are_lynx_options_when_the_model_takes_none_of_that_name():
    model, x = Proj(), torch.randn(24, 16)
    report = lynx_compile.explain(model, x, options={"exclude": ["proj"]})
    assert report.layers[0].reason == "excluded by 'proj'"
    with pytest.raises(lynx_compile.OptionError, match="unknown option"):
        lynx_compile.explain(model, x, options={"scale": 2.0})
