import json

import pytest
from pydantic import ValidationError

from shopformer.config import Config, ConfigError, apply_overrides, config_from_dict, load_config


def test_defaults_round_trip_through_json() -> None:
    cfg = Config()
    again = config_from_dict(json.loads(cfg.to_json()))
    assert again == cfg


def test_unknown_key_is_rejected_with_its_name(tmp_path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[train]\nlr = 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(p)


def test_wrong_type_is_rejected_with_its_name() -> None:
    with pytest.raises(ConfigError, match=r"model\.dim"):
        config_from_dict({"model": {"dim": "64"}})


def test_unknown_section_is_rejected() -> None:
    with pytest.raises(ConfigError, match="optimizer"):
        config_from_dict({"optimizer": {}})


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(ValidationError):
        cfg.train.epochs = 3  # type: ignore[misc]


def test_overrides_are_validated() -> None:
    cfg = apply_overrides(Config(), ["train.epochs=3", "model.name=gru4rec"])
    assert cfg.train.epochs == 3 and cfg.model.name == "gru4rec"
    with pytest.raises(ConfigError, match="epochs"):
        apply_overrides(Config(), ["train.epochs=-1"])
    with pytest.raises(ConfigError):
        apply_overrides(Config(), ["epochs=3"])


def test_heads_must_divide_dim() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        config_from_dict({"model": {"dim": 10, "heads": 3}})


def test_refit_and_titles_are_rejected_for_multi_task_runs() -> None:
    assert config_from_dict({"train": {"refit": True}}).train.refit
    with pytest.raises(ConfigError, match="train.refit is supported for task.kind='next-item' only"):
        config_from_dict({"train": {"refit": True}, "task": {"kind": "multi"}})
    with pytest.raises(ConfigError, match="text.titles is supported for task.kind='next-item' only"):
        config_from_dict({"text": {"titles": "t.tsv"}, "task": {"kind": "next-purchase"}})
    with pytest.raises(ConfigError, match="text.attributes is supported for task.kind='next-item' only"):
        config_from_dict({"text": {"attributes": "a.json"}, "task": {"kind": "multi"}})
    with pytest.raises(ConfigError, match="text.neighbours is supported for task.kind='next-item' only"):
        config_from_dict({"text": {"neighbours": 64}, "task": {"kind": "multi"}})
    with pytest.raises(ConfigError, match="text.neighbours are fused into the tied item table"):
        config_from_dict({"text": {"neighbours": 64}, "model": {"tie_output": False}})
    with pytest.raises(ConfigError, match="loss.mask_seen is supported for task.kind='next-item' only"):
        config_from_dict({"loss": {"mask_seen": True}, "task": {"kind": "multi"}})
    with pytest.raises(ConfigError, match="needs eval.exclude_seen = true"):
        config_from_dict({"loss": {"mask_seen": True}, "eval": {"exclude_seen": False}})
    with pytest.raises(ConfigError, match="needs loss.kind='ce'"):
        config_from_dict({"loss": {"mask_seen": True, "kind": "sampled"}})
    with pytest.raises(ConfigError, match="text.id_dropout"):
        config_from_dict({"text": {"id_dropout": 1.0}})
    with pytest.raises(ConfigError, match="needs model.tie_output = true"):
        config_from_dict({"text": {"titles": "t.tsv"}, "model": {"tie_output": False}})
    with pytest.raises(ConfigError, match="needs model.tie_output = true"):
        config_from_dict({"text": {"attributes": "a.json"}, "model": {"tie_output": False}})


def test_missing_config_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
