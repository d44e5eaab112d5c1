"""Policy files: every malformed document is one PolicyError naming the file, the layer and the field; saving never
overwrites a file lynx did not write, is atomic, and loading reads only the adapter file the JSON names."""

import hashlib
import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from lynx_compile import LayerPolicy, LoraAdapter, Policy, PolicyError
from lynx_compile.policy_files import adapters_path


def lora_policy():
    layers = {"up": LayerPolicy("sparse", "measured", 0.1, 0.2, 0.5, lora_rank=2),
              "out": LayerPolicy("sparse", "measured", 0.1, 0.2, 0.3, lora_rank=2),
              "down": LayerPolicy("dense", "too fragile", 0.9, 0.9, 0.2)}  # fmt: skip
    adapters = {name: LoraAdapter(torch.randn(4, 2), torch.randn(2, 3)) for name in ("up", "out")}
    return Policy(layers, "Model", "0.1.0", {"n": 2, "m": 4, "norm_compensation": True, "min_tokens": 16}, 0.2, 0.1,
                  adapters=adapters)  # fmt: skip


def plain_policy():
    return Policy({"up": LayerPolicy("sparse", "measured"), "down": LayerPolicy("dense", "fragile")}, "Model", "0.1.0")


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def edited(tmp_path, edit, policy=None):
    """A saved policy whose JSON document went through `edit(document)` (which may return a replacement)."""
    path = tmp_path / "policy.json"
    (policy or plain_policy()).save(path)
    document = json.loads(path.read_text())
    return write_json(path, edit(document) or document)


def replace_adapters(json_path, tensors):
    """Swap in other adapter tensors, re-signing the JSON, as a careful editor would."""
    target = adapters_path(json_path)
    save_file(tensors, str(target), metadata={"format": "lynx-policy-adapters"})
    document = json.loads(json_path.read_text())
    document["adapter_file"]["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    write_json(json_path, document)


# ---- validation: one error naming file, layer and field ------------------------------------------------------------


@pytest.mark.parametrize("decision", ["Dense", "off", None, False, 0, "sparse "])
def test_a_decision_other_than_sparse_or_dense_is_refused(tmp_path, decision):
    path = edited(tmp_path, lambda doc: doc["layers"]["down"].update(decision=decision))
    message = r"policy .*policy\.json, layer 'down', field 'decision': must be 'sparse' or"
    with pytest.raises(PolicyError, match=message):
        Policy.load(path)
    with pytest.raises(PolicyError, match="field 'decision'"):
        LayerPolicy(decision, "by hand")


@pytest.mark.parametrize(
    "edit, message",
    [(lambda doc: {k: v for k, v in doc.items() if k != "layers"}, "field 'layers': missing"),
     (lambda doc: [doc], "must be a JSON object, got list"),
     (lambda doc: doc.update(layers=[["up", "sparse"]]), "field 'layers': must be an object"),
     (lambda doc: doc["layers"].update(up="sparse"), "layer 'up': must be an object"),
     (lambda doc: doc["layers"].update(up={"decision": "sparse"}), "layer 'up', field 'reason': missing"),
     (lambda doc: doc["layers"]["up"].update(lora_rank="3"), "layer 'up', field 'lora_rank': must be an int"),
     (lambda doc: doc["layers"]["up"].update(lora_rank=True), "layer 'up', field 'lora_rank': must be an int"),
     (lambda doc: doc["layers"]["up"].update(error=float("nan")), "layer 'up', field 'error'"),
     (lambda doc: doc["layers"]["up"].update(flop_share=2), "layer 'up', field 'flop_share'"),
     (lambda doc: doc["layers"]["up"].update(decison="dense"), "layer 'up': unknown field.*'decison'"),
     (lambda doc: doc.update(target="0.1"), "field 'target'"),
     (lambda doc: doc.update(options={"n": True}), "field 'options'.*'n'"),
     (lambda doc: doc.update(options=[2, 4]), "field 'options'"),
     (lambda doc: doc.update(measurements={"k": {"path": "p"}}), "field \"measurements\\['k'\\]\""),
     (lambda doc: doc.update(schema_version=99), "field 'schema_version': 99 is newer"),
     (lambda doc: doc.update(schema_version=99, new_thing=1), "99 is newer than this lynx reads"),
     (lambda doc: doc.update(schema_version=99, adapter_file=["a", "new", "form"]), "99 is newer"),
     (lambda doc: doc.update(measurements={"k": {"path": "p", "params": {}, "dense_ms": 1.0, "sparse_ms": 1.0,
                                                 "tokens": 3, "epilogue_ms": "x"}}), "'epilogue_ms' invalid"),
     (lambda doc: doc.update(measurements={"k": {"path": "p", "params": {}, "dense_ms": 1.0, "sparse_ms": 0.0,
                                                 "tokens": 3}}), "'sparse_ms' missing or invalid"),
     (lambda doc: doc.update(format="other"), "field 'format'"),
     (lambda doc: doc.update(extra=1), "unknown field.*'extra'"),
     (lambda doc: doc.update(adapter_file="/etc/passwd"), "field 'adapter_file'"),
     (lambda doc: doc.update(adapter_file={"name": "../x.safetensors", "sha256": "0"}), "beside the policy")],
)
def test_malformed_documents_name_the_field(tmp_path, edit, message):
    path = edited(tmp_path, edit)
    with pytest.raises(PolicyError, match=message) as raised:
        Policy.load(path)
    assert str(path) in str(raised.value)


def test_text_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text('{"layers": {')
    with pytest.raises(PolicyError, match=r"policy\.json: is not a JSON document"):
        Policy.load(path)
    with pytest.raises(PolicyError, match="cannot be read"):
        Policy.load(tmp_path / "absent.json")


@pytest.mark.parametrize(
    "tensors, message",
    [({"up.lora_a": torch.randn(4, 2), "up.lora_b": torch.randn(2, 3), "out.lora_a": torch.randn(4, 2)},
      "layer 'out', field 'lora_b': missing"),
     ({"up.lora_a": torch.full((4, 2), float("nan")), "up.lora_b": torch.randn(2, 3),
       "out.lora_a": torch.randn(4, 2), "out.lora_b": torch.randn(2, 3)}, "layer 'up', field 'lora_a': holds NaN"),
     ({"up.lora_a": torch.ones(4, 2, dtype=torch.int32), "up.lora_b": torch.randn(2, 3),
       "out.lora_a": torch.randn(4, 2), "out.lora_b": torch.randn(2, 3)}, "field 'lora_a': must be floating point"),
     ({"up.lora_a": torch.randn(4, 1), "up.lora_b": torch.randn(1, 3),
       "out.lora_a": torch.randn(4, 2), "out.lora_b": torch.randn(2, 3)}, "layer 'up', field 'lora_rank': asks for"),
     ({"up.weight": torch.randn(4, 2)}, "holds 'up.weight'")],
    ids=["missing-half", "nan", "int32", "rank", "foreign-key"],
)
def test_bad_adapters_name_the_layer_and_half(tmp_path, tensors, message):
    path = tmp_path / "policy.json"
    lora_policy().save(path)
    replace_adapters(path, tensors)
    with pytest.raises(PolicyError, match=message):
        Policy.load(path)


def test_policies_built_in_code_are_checked_too():
    with pytest.raises(PolicyError, match="layer 'up', field 'lora_a': holds NaN"):
        Policy({"up": LayerPolicy("sparse", "x", lora_rank=1)},
               adapters={"up": LoraAdapter(torch.full((4, 1), float("nan")), torch.ones(1, 3))})  # fmt: skip
    with pytest.raises(PolicyError, match="field 'options'"):
        Policy({}, options={"n": 2, "m": 3})
    with pytest.raises(PolicyError, match="override decision"):
        plain_policy().with_overrides({"*": "Dense"})


def test_saved_files_carry_the_schema_version_and_name_their_adapters(tmp_path):
    path, policy = tmp_path / "policy.json", lora_policy()
    policy.save(path)
    document = json.loads(path.read_text())
    assert (document["format"], document["schema_version"]) == ("lynx-policy", 1)
    assert document["adapter_file"]["name"] == "policy.lora.safetensors"
    loaded = Policy.load(path)
    assert loaded == policy and all(torch.equal(loaded.adapters[n].b, policy.adapters[n].b) for n in ("up", "out"))
    plain_policy().save(tmp_path / "plain.json")
    assert json.loads((tmp_path / "plain.json").read_text())["adapter_file"] is None


# ---- saving never destroys data --------------------------------------------------------------------------------


def test_saving_beside_a_same_stem_checkpoint_leaves_it_alone(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    save_file({"weight": torch.ones(3)}, str(checkpoint))
    before = checkpoint.read_bytes()
    policy = lora_policy()
    policy.save(tmp_path / "model.json")
    assert checkpoint.read_bytes() == before
    loaded = Policy.load(tmp_path / "model.json")
    assert loaded == policy and torch.equal(loaded.adapters["up"].a, policy.adapters["up"].a)


def test_files_lynx_did_not_write_are_never_overwritten(tmp_path):
    foreign_adapters = adapters_path(tmp_path / "model.json")
    save_file({"weight": torch.ones(3)}, str(foreign_adapters))
    before = foreign_adapters.read_bytes()
    with pytest.raises(PolicyError, match="model.lora.safetensors: adapter file exists and was not written by lynx"):
        lora_policy().save(tmp_path / "model.json")
    assert foreign_adapters.read_bytes() == before and not (tmp_path / "model.json").exists()

    config = write_json(tmp_path / "config.json", {"hidden_size": 64})
    with pytest.raises(PolicyError, match="config.json: exists and is not a lynx policy"):
        plain_policy().save(config)
    assert json.loads(config.read_text()) == {"hidden_size": 64}

    with pytest.raises(PolicyError, match="give a .json path"):
        lora_policy().save(tmp_path / "p.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.lora.safetensors"]


def test_a_json_with_a_policys_keys_but_not_its_shape_is_not_overwritten(tmp_path):
    mine = write_json(tmp_path / "mine.json", {"layers": 1, "lynx_version": "n/a", "options": 3, "mine": True})
    before = mine.read_bytes()
    with pytest.raises(PolicyError, match="exists and is not a lynx policy"):
        plain_policy().save(mine)
    assert mine.read_bytes() == before


def test_saving_into_a_missing_folder_names_the_folder(tmp_path):
    with pytest.raises(PolicyError, match="the folder .*missing' does not exist"):
        plain_policy().save(tmp_path / "missing" / "p.json")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_policy_path_is_an_option_error():
    import lynx_compile

    with pytest.raises(lynx_compile.OptionError, match="lynx option 'policy'"):
        lynx_compile.parse_options({"policy": ""})


def test_a_policy_overwrites_its_own_files(tmp_path):
    path = tmp_path / "policy.json"
    plain_policy().save(path)
    lora_policy().save(path)
    lora_policy().with_overrides({"up": "dense"}).save(path)
    assert Policy.load(path).layers["up"].decision == "dense"
    legacy = {k: v for k, v in plain_policy().to_dict().items() if k not in ("format", "schema_version")}
    write_json(path, legacy)  # a policy written before schema version 1 is recognised as one
    plain_policy().save(path)


def test_load_reads_only_the_adapter_file_the_json_names(tmp_path):
    path = tmp_path / "policy.json"
    plain_policy().save(path)
    (tmp_path / "policy.safetensors").write_bytes(b"\xff" * 64)  # garbage a same-stem reader would choke on
    (tmp_path / "policy.lora.safetensors").write_bytes(b"\xff" * 64)
    assert Policy.load(path) == plain_policy()


def test_a_changed_adapter_file_is_detected(tmp_path):
    path = tmp_path / "policy.json"
    lora_policy().save(path)
    other = tmp_path / "other.json"
    lora_policy().save(other)  # same shapes, other random values
    adapters_path(path).write_bytes(adapters_path(other).read_bytes())
    with pytest.raises(PolicyError, match="field 'adapter_file'.*SHA-256 differs"):
        Policy.load(path)


def test_policies_saved_before_the_schema_version_still_load(tmp_path):
    policy = lora_policy()
    path = tmp_path / "old.json"
    legacy = {k: v for k, v in policy.to_dict().items() if k not in ("format", "schema_version")}
    write_json(path, legacy)
    tensors = {f"{name}.lora_{half}": getattr(adapter, half) for name, adapter in policy.adapters.items()
               for half in ("a", "b")}  # fmt: skip
    save_file(tensors, str(tmp_path / "old.safetensors"))
    loaded = Policy.load(path)
    assert loaded == policy and torch.equal(loaded.adapters["out"].b, policy.adapters["out"].b)


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "policy.json"
    lora_policy().save(path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        lora_policy().with_overrides({"up": "dense"}).save(path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing changed, nothing left over


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_file_modes_follow_the_umask_like_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        lora_policy().save(tmp_path / "policy.json")
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(previous)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("policy.json", "policy.lora.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected


def test_a_file_replaced_keeps_its_mode(tmp_path):
    path = tmp_path / "policy.json"
    lora_policy().save(path)
    for file in (path, adapters_path(path)):
        file.chmod(0o600)  # kept private by its owner
    lora_policy().with_overrides({"up": "dense"}).save(path)
    assert {stat.S_IMODE(file.stat().st_mode) for file in (path, adapters_path(path))} == {0o600}


@pytest.mark.parametrize("first, second", [("policy_0.2", "policy_0.3"), ("p.json", "p")])
def test_policies_whose_names_share_a_stem_never_overwrite_each_others_adapters(tmp_path, first, second):
    policy = lora_policy()
    policy.save(tmp_path / first)
    with pytest.raises(PolicyError, match=f"holds the adapters of the policy '{first}': not overwriting them"):
        lora_policy().save(tmp_path / second)
    loaded = Policy.load(tmp_path / first)
    assert loaded == policy and torch.equal(loaded.adapters["up"].a, policy.adapters["up"].a)


def test_a_layer_renamed_in_the_json_says_its_adapter_is_missing_from_the_file(tmp_path):
    path = edited(tmp_path, lambda doc: doc["layers"].update(renamed=doc["layers"].pop("up")), lora_policy())
    with pytest.raises(PolicyError, match="layer 'renamed'.* the 2 adapter.s. loaded .* hold none under this name"):
        Policy.load(path)


@pytest.mark.parametrize("overrides, message", [([("up", "dense")], "takes a dict"), ({3: "dense"}, "is a str, got 3")])
def test_overrides_of_the_wrong_form_are_a_clear_error(overrides, message):
    with pytest.raises(TypeError, match=message):
        plain_policy().with_overrides(overrides)
