import json
import re
from pathlib import Path

import pytest
import yaml

from facefoundry.config import RunConfig, load_config, validate_config
from facefoundry.sections import ConfigError, apply_overrides

MINIMAL = {"identities": {"count": 4}, "images": {"per_identity": 2}}


def write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_presets_validate(smoke_config_path):
    cfg = load_config(smoke_config_path)
    assert cfg.identities.count == 8 and cfg.generator.tiny and cfg.filter.mode == "annotate"
    load_config(smoke_config_path.parent / "arc2face.yaml")


def test_defaults_filled_and_hash_stable():
    a = validate_config(json.loads(json.dumps(MINIMAL)))
    b = validate_config(json.loads(json.dumps(MINIMAL)))
    assert a.generator.steps == 25 and a.generator.guidance_scale == 3.0
    assert a.config_hash() == b.config_hash()
    explicit = validate_config({**MINIMAL, "generator": {"steps": 25}})
    assert explicit.config_hash() == a.config_hash()  # defaults spelled out hash the same
    changed = validate_config({**MINIMAL, "generator": {"steps": 24}})
    assert changed.config_hash() != a.config_hash()
    # Where and how fast it runs does not change the dataset, so it does not change the run id.
    elsewhere = validate_config({**MINIMAL, "ray": {"address": "auto", "generator_actors": 8}})
    assert elsewhere.config_hash() == a.config_hash()


def test_overrides_typed_and_nested(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["identities.count=10", "generator.guidance_scale=1.5",
                                                 "generator.output_size=null", "filter.mode=annotate"])
    assert cfg.identities.count == 10 and cfg.generator.guidance_scale == 1.5
    assert cfg.generator.output_size is None and cfg.filter.mode == "annotate"


@pytest.mark.parametrize(
    "data, overrides, needle",
    [
        ({**MINIMAL, "identites": {"count": 3}}, [], "identites: unknown key"),
        (MINIMAL, ["generator.stepz=3"], "generator.stepz (generator.kind=arc2face): unknown key; allowed: kind,"),
        (MINIMAL, ["generator.kind=vec2face", "identities.space=raw", "generator.steps=3"],
         "generator.steps (generator.kind=vec2face): unknown key; allowed: kind, checkpoint"),
        (MINIMAL, ["generator.kind=vec2face"], "identities.space must be 'raw'"),
        (MINIMAL, ["generator.kind=vec2face", "identities.space=raw", "generator.mask_ratio_min=0.9",
                   "generator.mask_ratio_max=0.5"], "mask_ratio_min must not exceed"),
        (MINIMAL, ["generator.kind=stylegan"], "does not match any of the expected tags: 'arc2face', 'vec2face'"),
        (MINIMAL, ["images.per_identity=0"], "images.per_identity"),
        (MINIMAL, ["identities.count=many"], "identities.count"),
        (MINIMAL, ["identities.max_cosine=1.5"], "identities.max_cosine"),
        (MINIMAL, ["identities.max_cosine=-2"], "identities.max_cosine"),
        (MINIMAL, ["filter.mode=keep"], "'drop' or 'annotate'"),
        ({"images": {"per_identity": 2}}, [], "identities: Field required"),
        (MINIMAL, ["identities.space=raw"], "identities.space must be 'unit'"),
    ],
)
def test_bad_values_name_the_key(tmp_path, data, overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data), overrides)
    assert needle in str(err.value)


def test_malformed_inputs(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("identities:\n  count: [1, 2\nimages:\n  per_identity: 3\n")
    with pytest.raises(ConfigError) as err:  # one line: where, what, and what was left open
        load_config(bad)
    assert str(err.value) == (f"{bad}: not valid YAML: line 3, column 7: expected ',' or ']', but got ':' "
                              "(while parsing a flow sequence at line 2, column 10)")
    with pytest.raises(ConfigError) as err:
        apply_overrides({}, ["identities.count=[1"])
    assert "\n" not in str(err.value) and "value is not valid YAML: line 1, column 3: expected" in str(err.value)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides({}, ["identities.count"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"images": 3}, ["images.per_identity=2"])
    with pytest.raises(ConfigError, match="expected a mapping"):
        validate_config([1, 2])


def test_a_folder_or_a_binary_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path))}: is a folder, not a config file"):
        load_config(tmp_path)
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"identities: \xff\xfe\x00")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(binary))}: not UTF-8 text"):
        load_config(binary)


def test_roundtrip_through_json():
    cfg = validate_config(MINIMAL)
    again = RunConfig.model_validate_json(json.dumps(cfg.model_dump(mode="json")))
    assert again.config_hash() == cfg.config_hash()


def test_every_run_preset_validates():
    """Each shipped run preset loads (evaluate-*.yaml are training recipes, kuberay-*.yaml a Kubernetes manifest)."""
    presets = [p for p in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
               if not p.name.startswith(("evaluate", "kuberay"))]
    names = {p.name for p in presets}
    assert {"smoke.yaml", "smoke-vec2face.yaml", "smoke-idiff-face.yaml", "idiff-face.yaml"} <= names
    for path in presets:
        assert load_config(path).run.name, path


BALANCED = {"identities": {"count": 10}, "images": {"per_identity": 2}, "attributes": {},
            "balance": {"attributes": ["gender", "age_group"],
                        "targets": {"gender": {"female": 0.5, "male": 0.5},
                                    "age_group": {"0-19": 0.1, "20-39": 0.4, "40-59": 0.3, "60+": 0.2}}}}


@pytest.mark.parametrize(("change", "message"), [
    ({"attributes": None}, "balance needs the attributes section"),
    ({"balance": {"attributes": ["race"], "targets": {"race": {"White": 1.0}}}}, "'race' is not estimated"),
    ({"balance": {"attributes": ["gender"], "targets": {"gender": {"woman": 0.5, "male": 0.5}}}},
     "'woman' is not one the estimator gives"),
    ({"balance": {"attributes": ["gender"], "targets": {"gender": {"female": 0.7, "male": 0.5}}}}, "sum to 1"),
    ({"balance": {"attributes": ["gender"], "cells": {"female|20-39": 1.0}}}, "one per attribute"),
    ({"attributes": {"estimator": "fairface", "age_edges": [25]}}, "bins starting at"),
    ({"attributes": {"age_edges": [40, 20]}}, "increase strictly"),
])
def test_balance_and_attributes_errors_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({**BALANCED, **change})


def test_balance_config_and_hash_of_runs_without_it():
    cfg = validate_config(BALANCED)
    assert cfg.balance.oversample >= 1 and cfg.attributes.estimator == "genderage"
    plain = validate_config({"identities": {"count": 10}, "images": {"per_identity": 2}})
    off = validate_config({"identities": {"count": 10}, "images": {"per_identity": 2}, "attributes": None})
    assert off.config_hash() == plain.config_hash() != cfg.config_hash()
    fair = {**BALANCED, "attributes": {"estimator": "fairface", "age_edges": [20, 40, 60]},
            "balance": {"attributes": ["race"], "targets": {"race": {"White": 0.5, "Black": 0.5}}}}
    assert validate_config(fair).balance.attributes == ["race"]


@pytest.mark.parametrize(("data", "expected"), [
    ({"identities": {"count": 4}, "images": {"per_identity": 2}}, "2335a3e983ea3201"),
    ({"identities": {"count": 4, "space": "raw", "norm": 22.0}, "images": {"per_identity": 2},
      "generator": {"kind": "vec2face", "attrop": {"enabled": True, "target_yaw": 30}}}, "dab4d4f778f0cdfc"),
    ({"identities": {"count": 4}, "images": {"per_identity": 2}, "generator": {"kind": "idiff_face", "tiny": True}},
     "a8ecb778c7589008"),
])
def test_hash_of_configs_from_before_later_keys_is_unchanged(data, expected):
    """The hashes these configs had before attributes, balance, pose schedules and the ControlNet existed (computed
    with the code of 695bdb7): a key added later must be in config.LATER_KEYS, or older runs lose their id."""
    assert validate_config(data).config_hash() == expected
