import dataclasses

import pytest

from lynx_compile.checks import OptionError
from lynx_compile.config import LynxConfig, parse_options


def test_defaults_are_auto_2_4_with_norm():
    config = parse_options(None)
    assert (config.execution, config.n, config.m, config.norm_compensation) == ("auto", 2, 4, True)
    assert config.inductor_patches() == {}


@pytest.mark.parametrize(
    "config",
    [LynxConfig(), LynxConfig(execution="dense", n=1, m=4, include=("a.*",), exclude=("*.proj_out",), min_tokens=0),
     LynxConfig(mode="reduce-overhead", inductor={"max_autotune": True}, strict=True)],
    ids=["default", "dense-1:4-globs", "mode+inductor"],
)
def test_dict_round_trip(config):
    assert LynxConfig.from_dict(config.to_dict()) == config


def test_inductor_options_are_forwarded_and_lynx_options_parsed():
    config = parse_options({"execution": "dense", "triton.cudagraphs": True, "max_autotune": False, "n": 1})
    assert config.execution == "dense" and config.n == 1
    assert config.inductor == {"triton.cudagraphs": True, "max_autotune": False}


def test_unknown_option_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sparsity'\].*'execution'"):
        parse_options({"sparsity": 0.5})


def test_mode_reaches_inductor_through_either_route():
    by_mode = parse_options(None, mode="reduce-overhead")
    by_option = parse_options({"mode": "reduce-overhead", "execution": "dense"})
    assert by_mode.inductor_patches() == by_option.inductor_patches() == {"triton.cudagraphs": True}
    explicit = parse_options({"mode": "max-autotune", "triton.cudagraphs": False})
    assert explicit.inductor_patches()["triton.cudagraphs"] is False  # an explicit option beats the mode's
    assert explicit.inductor_patches()["max_autotune"] is True


@pytest.mark.parametrize(
    "options, message",
    [({"execution": "fast"}, "'execution' must be one of"), ({"n": 2, "m": 3}, "power of two"),
     ({"n": 4, "m": 4}, "1 <= n < m"), ({"min_tokens": -1}, "'min_tokens' must be an int >= 0"),
     ({"mode": "turbo"}, "'mode'.*turbo"), ({"min_speedup": 0}, "'min_speedup' must be a finite number > 0"),
     ({"compiler": "tvm"}, "'compiler' must be one of"), ({"exclude": [3]}, "'exclude' must be a glob string")],
)
def test_invalid_values_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        parse_options(options)


def test_single_glob_string_becomes_a_tuple():
    assert parse_options({"exclude": "*.proj_out"}).exclude == ("*.proj_out",)


def test_cache_key_changes_with_every_field():
    base = LynxConfig()
    changed = [dataclasses.replace(base, n=1), dataclasses.replace(base, norm_compensation=False),
               dataclasses.replace(base, exclude=("x",)), dataclasses.replace(base, execution="dense")]
    keys = {base.cache_key(), *(c.cache_key() for c in changed)}
    assert len(keys) == 1 + len(changed)


def policy_with_adapters(scale=1.0):
    import torch

    from lynx_compile import LayerPolicy, LoraAdapter, Policy

    layers = {"up": LayerPolicy("sparse", "measured", 0.1, 0.2, 0.5, lora_rank=2), "down": LayerPolicy("dense", "x")}
    adapter = LoraAdapter(torch.arange(8.0).reshape(4, 2) * scale, torch.ones(2, 3))
    measurement = {"path": "p", "params": {}, "dense_ms": 1.0, "sparse_ms": 0.5, "tokens": 16}
    return Policy(layers, "Model", "0.1.0", {"n": 2}, 0.2, 0.1, {"k": measurement}, {"up": adapter})


def test_a_config_with_a_lora_policy_round_trips_and_hashes_the_same():
    import torch

    config = LynxConfig(policy=policy_with_adapters(), exclude=("a",))
    again = LynxConfig.from_dict(config.to_dict())
    assert again == config and again.cache_key() == config.cache_key()
    assert torch.equal(again.policy.adapters["up"].a, config.policy.adapters["up"].a)


def test_the_cache_key_follows_adapter_content_not_identity():
    same = LynxConfig(policy=policy_with_adapters()).cache_key()
    assert LynxConfig(policy=policy_with_adapters()).cache_key() == same  # fresh tensors, equal values
    assert LynxConfig(policy=policy_with_adapters(scale=2.0)).cache_key() != same
    assert "tensor(" not in same  # hashed, never repr'd


def test_the_cache_key_takes_inductor_options_json_cannot_write():
    """A path by its text, a custom pass by its uuid (as Inductor keys it); anything else never matches a cached
    graph (a fresh token each time: it raised inside the compile)."""
    from pathlib import Path

    from torch._inductor.custom_graph_pass import CustomGraphPass

    class Pass(CustomGraphPass):
        def __init__(self, version):
            self.version = version

        def __call__(self, graph):
            pass

        def uuid(self):
            return f"pass-v{self.version}"

    def key(value, slot="post_grad_custom_pre_pass"):
        return parse_options({slot: value}).cache_key()

    assert key(Pass(1)) == key(Pass(1)) != key(Pass(2)) and "pass-v1" in key(Pass(1))
    assert key(Path("/tmp/a"), "trace.debug_dir") == key("/tmp/a", "trace.debug_dir") != key(Path("/tmp/b"),
                                                                                              "trace.debug_dir")
    opaque = object()
    assert key(opaque) != key(opaque)


@pytest.mark.parametrize(
    "option, value",
    [("norm_compensation", "no"), ("norm_compensation", None), ("n", True), ("m", 4.0), ("min_tokens", True),
     ("min_features", 1.5), ("strict", "yes"), ("strict", 1), ("min_speedup", float("nan")),
     ("min_speedup", float("inf")), ("min_speedup", True), ("execution", None), ("mode", 3), ("include", 3),
     ("exclude", {"a": 1}), ("inductor", ["max_autotune"]), ("triton.cudagraphs", "yes"), ("policy", 3)],
)
def test_every_option_is_type_and_range_checked_naming_it(option, value):
    with pytest.raises(OptionError, match=f"'{option}'"):
        parse_options({option: value})


def test_a_bad_option_fails_at_compile_time_even_without_strict():
    """norm_compensation="no" used to pass the lynx passes and crash in AOT tracing with a pybind cast error."""
    import torch

    model = torch.nn.Linear(16, 16)
    with pytest.raises(Exception, match="lynx option 'norm_compensation' must be True or False, got 'no'"):
        torch.compile(model, backend="lynx", options={"norm_compensation": "no"})(torch.randn(32, 16))


def test_from_dict_rejects_unknown_fields_and_versions():
    with pytest.raises(OptionError, match="unknown field.*'sparsity'"):
        LynxConfig.from_dict({"sparsity": 0.5})
    with pytest.raises(OptionError, match="version 2 is not supported"):
        LynxConfig.from_dict({**LynxConfig().to_dict(), "version": 2})


def test_the_inductor_slot_lynx_lowers_in_is_refused_when_the_options_are_read():
    """At option time, not deep inside the compile: lynx's lowering pass would silently replace the user's."""
    with pytest.raises(OptionError, match="post_grad_custom_post_pass"):
        parse_options({"post_grad_custom_post_pass": None})
    with pytest.raises(OptionError, match="post_grad_custom_post_pass"):
        LynxConfig(inductor={"post_grad_custom_post_pass": None})


def test_a_config_is_hashable_as_a_frozen_dataclass_is_and_equal_configs_hash_alike():
    first, second = LynxConfig(inductor={"max_autotune": True}), LynxConfig(inductor={"max_autotune": True})
    assert first == second and hash(first) == hash(second) and len({first, second, LynxConfig()}) == 2
    assert hash(LynxConfig(min_speedup=2)) == hash(LynxConfig(min_speedup=2.0))  # equal, so hashed alike
