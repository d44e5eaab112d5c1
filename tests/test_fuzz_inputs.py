"""Fuzzing the two inputs users write by hand: option dictionaries and policy JSON documents. Whatever they hold,
the library answers with a config/policy or with its own error naming what is wrong — never an AttributeError,
KeyError, TypeError from deep inside, or a pybind cast error."""

import json
import math

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from lynx_compile import LayerPolicy, LynxConfig, OptionError, Policy, PolicyError, parse_options
from lynx_compile.policy_schema import DOCUMENT_FIELDS, LAYER_FIELDS

SCALARS = st.none() | st.booleans() | st.integers(-3, 40) | st.integers() | st.floats() | st.text(max_size=8)
JSON = st.recursive(SCALARS, lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(max_size=6), children, max_size=3), max_leaves=8)  # fmt: skip

LYNX_KEYS = [name for name in LynxConfig.__dataclass_fields__ if name not in ("policy", "version")]
INDUCTOR_KEYS = ["max_autotune", "triton.cudagraphs", "fx_graph_cache", "coordinate_descent_tuning"]
OPTION_KEYS = st.sampled_from(LYNX_KEYS + INDUCTOR_KEYS) | st.text(max_size=8)
NAMED_VALUES = ["auto", "simulate", "dense", "sparse", "eager", "inductor", "reduce-overhead", "*.proj", float("nan"),
                2, 4, 1.05, True, False]  # fmt: skip
OPTION_VALUES = JSON | st.sampled_from(NAMED_VALUES)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(OPTION_KEYS, OPTION_VALUES, max_size=4), st.none() | st.text(max_size=12))
def test_option_dictionaries_give_a_config_or_an_error_naming_an_option(options, mode):
    try:
        config = parse_options(options, mode)
    except OptionError as error:
        message = str(error)
        named = [key for key in options if repr(key) in message] + (["mode"] if "'mode'" in message else [])
        assert named, f"{message!r} names none of {list(options)}"
        return
    assert isinstance(config, LynxConfig)
    assert LynxConfig.from_dict(config.to_dict()) == config
    assert isinstance(config.min_speedup, (int, float)) and math.isfinite(config.min_speedup)


LAYER = st.dictionaries(st.sampled_from(list(LAYER_FIELDS)), SCALARS | st.sampled_from(["sparse", "dense"]),
                        max_size=7)  # fmt: skip
DOCUMENT = st.dictionaries(
    st.sampled_from(list(DOCUMENT_FIELDS)) | st.text(max_size=6),
    JSON | st.dictionaries(st.text(max_size=6), LAYER, max_size=3)
    | st.fixed_dictionaries({"n": SCALARS, "m": SCALARS}) | st.sampled_from(["lynx-policy", 0, 1, 2]),
    max_size=6,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENT | st.builds(lambda layers: {"layers": layers}, st.dictionaries(st.text(max_size=6), LAYER)) | JSON)
def test_policy_documents_give_a_policy_or_a_policy_error(document):
    try:
        policy = Policy.from_dict(document)
    except PolicyError:
        return
    assert all(isinstance(layer, LayerPolicy) and layer.decision in ("sparse", "dense")
               for layer in policy.layers.values())  # fmt: skip
    assert Policy.from_dict(json.loads(policy.to_json())) == policy


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(document=DOCUMENT | JSON)
def test_policy_files_give_a_policy_or_an_error_naming_the_file(tmp_path, document):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    try:
        Policy.load(path)
    except PolicyError as error:
        assert str(path) in str(error)
