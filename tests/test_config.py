"""Experiment configs: two-stage plugin validation, every error with its path and value, --set overrides,
cross-field checks, stages, YAML round trip. Plugins are small fakes registered by hand, so these tests
do not depend on the built-in plugin modules."""
from __future__ import annotations

import copy
import re
from contextlib import ExitStack
from typing import Optional

import pytest
import yaml
from pydantic import Field, create_model

from worldkit import config, registry
from worldkit.errors import MISSING, ConfigError
from worldkit.interfaces import KINDS, PluginConfig
from worldkit.schema import ExperimentConfig, PluginSpec, TrainConfig


def fake(kind: str, doc: str, **fields) -> type:
    """A concrete plugin class of ``kind`` whose Config has ``fields`` (name=(type, default))."""
    base = KINDS[kind]
    cfg = create_model(f"{kind.title()}Config", __base__=PluginConfig, **fields)
    methods = {m: (lambda self, *a, **k: None) for m in base.__abstractmethods__}
    return type(f"Fake{kind.title()}", (base,), {"__doc__": doc, "Config": cfg, **methods})


FAKES = {
    ("env", "toy_env"): fake("env", "A toy env.", size=(int, 32)),
    ("memory", "toy_window"): fake("memory", "A toy window.", window_frames=(int, Field(4, ge=1))),
    ("memory", "dense"): fake("memory", "Stands in for dense."),
    ("selector", "all"): fake("selector", "Stands in for all."),
    ("attention", "sdpa"): fake("attention", "Stands in for sdpa."),
    ("trainer", "diffusion_forcing"): fake("trainer", "Stands in for diffusion forcing."),
    ("trainer", "toy_trainer"): fake("trainer", "A toy trainer.", exit_steps=(Optional[int], None)),
}


@pytest.fixture(autouse=True)
def fakes():
    with ExitStack() as stack:
        for (kind, name), cls in FAKES.items():
            stack.enter_context(registry.register(kind, name, cls, replace=True))
        yield FAKES


MINIMAL = {"name": "toy", "env": {"type": "toy_env"}}


def issues(raw, overrides=()) -> dict[str, tuple]:
    """Validate ``raw`` (after ``overrides``) expecting failure: {path: (value, message, source)}."""
    raw = copy.deepcopy(raw)
    with pytest.raises(ConfigError) as err:
        applied = config.apply_overrides(raw, overrides)
        config.validate(raw, "x.yaml", applied)
    return {i.path: (i.value, i.message, i.source) for i in err.value.issues}


def test_minimal_config_fills_defaults_from_the_registry():
    cfg = config.validate(copy.deepcopy(MINIMAL))
    assert isinstance(cfg.memory, PluginSpec) and cfg.memory.kind == "memory" and cfg.memory.type == "dense"
    assert (cfg.selector.type, cfg.attention.type, cfg.trainer.type) == ("all", "sdpa", "diffusion_forcing")
    assert cfg.env.config.size == 32
    assert (cfg.model.patch, cfg.model.width, cfg.model.layers, cfg.model.heads) == (8, 128, 4, 4)
    assert (cfg.train.clip_frames, cfg.train.batch_size, cfg.eval.horizons) == (16, 32, [1, 4, 12])
    assert cfg.stages == []


def test_plugin_fields_are_validated_by_the_plugins_own_config_and_build():
    cfg = config.validate({**MINIMAL, "memory": {"type": "toy_window", "window_frames": "6"}})
    assert cfg.memory.config.window_frames == 6
    assert isinstance(cfg.memory.config, FAKES[("memory", "toy_window")].Config)
    plugin = cfg.memory.build()
    assert isinstance(plugin, FAKES[("memory", "toy_window")]) and plugin.config.window_frames == 6
    assert cfg.memory.to_dict() == {"type": "toy_window", "window_frames": 6}


def test_unknown_plugin_name_names_the_field_the_value_and_the_choices():
    found = issues({**MINIMAL, "memory": {"type": "toy_windw"}})
    value, message, _ = found["memory.type"]
    assert value == "toy_windw"
    assert "did you mean 'toy_window'?" in message and "dense" in message


def test_unknown_keys_are_errors_with_the_allowed_keys():
    found = issues({**MINIMAL, "memory": {"type": "toy_window", "window_frmes": 3}, "model": {"widht": 64}})
    value, message, _ = found["memory.window_frmes"]
    assert value == 3 and "did you mean 'window_frames'?" in message and "allowed: type, window_frames" in message
    value, message, _ = found["model.widht"]
    assert value == 64 and "did you mean 'width'?" in message and "patch" in message


def test_every_error_is_collected_not_only_the_first():
    raw = {
        "name": "toy",
        "env": {"type": "toy_env", "size": "big"},
        "memory": {"type": "toy_window", "window_frames": 0},
        "model": {"prediction": "eps", "width": -1},
        "train": {"devices": [1], "schedule": "linear"},
        "stages": [{"name": "a", "trainer": {"type": "nope"}}],
    }
    found = issues(raw)
    assert set(found) == {
        "env.size", "memory.window_frames", "model.prediction", "model.width",
        "train.devices", "train.schedule", "stages[0].trainer.type",
    }
    assert found["model.prediction"][0] == "eps" and "'x0' or 'v'" in found["model.prediction"][1]
    assert found["memory.window_frames"][0] == 0 and "greater than or equal to 1" in found["memory.window_frames"][1]
    assert "integer" in found["train.devices"][1] and "'auto'" in found["train.devices"][1]  # union: one line


def test_missing_required_fields():
    found = issues({"env": {"type": "toy_env"}, "stages": [{"trainer": {"type": "toy_trainer"}}]})
    assert found["name"][0] is MISSING and found["stages[0].name"][0] is MISSING
    found = issues({"name": "toy"})
    assert "env choices" in found["env"][1] and "toy_env" in found["env"][1]
    found = issues({"name": "toy", "env": {"size": 32}})
    assert "toy_env" in found["env.type"][1]
    found = issues({"name": "toy", "env": "toy_env"})
    assert "expected a mapping {type: NAME, ...}" in found["env"][1]


@pytest.mark.parametrize(
    "raw, path, value, words",
    [
        ({"model": {"width": 130, "heads": 4}}, "model.heads", 4, "divide model.width=130"),
        ({"env": {"type": "toy_env", "size": 36}}, "model.patch", 8, "divide the env frame size 36"),
        ({"env": {"type": "toy_env", "size": 24}}, "model.block_patches", 2, "patches per side"),
        ({"data": {"episode_frames": 8}}, "data.episode_frames", 8, "train.clip_frames=16"),
        ({"train": {"clip_frames": 15}}, "train.clip_frames", 15, "multiple of model.chunk_frames=2"),
        ({"name": "a/b"}, "name", "a/b", "pattern"),
        ({"eval": {"horizons": [4, 1]}}, "eval.horizons", [4, 1], "must be increasing"),
        ({"eval": {"horizons": []}}, "eval.horizons", [], "at least 1 item"),
        ({"eval": {"context_frames": 3}}, "eval.context_frames", 3, "multiple of model.chunk_frames=2"),
        ({"train": {"precision": "banana"}}, "train.precision", "banana", "'bf16-mixed'"),
    ],
)
def test_cross_field_checks_point_at_the_field_to_change(raw, path, value, words):
    found = issues({**MINIMAL, **raw})
    assert found[path][0] == value and words in found[path][1]


def test_stages_merge_train_overrides_and_plugin_overrides():
    raw = {
        **MINIMAL,
        "memory": {"type": "toy_window", "window_frames": 8},
        "train": {"lr": 1e-3, "max_steps": 50},
        "stages": [
            {"name": "warm", "trainer": {"type": "diffusion_forcing"}, "memory": {"type": "dense"}},
            {"name": "sf", "trainer": {"type": "toy_trainer", "exit_steps": 2}, "train": {"lr": 1e-4}},
        ],
    }
    cfg = config.validate(raw)
    warm, sf = (cfg.stage_config(s) for s in cfg.stages)
    assert (warm.trainer.type, warm.memory.type, warm.train.lr) == ("diffusion_forcing", "dense", 1e-3)
    assert (sf.trainer.type, sf.trainer.config.exit_steps, sf.memory.type) == ("toy_trainer", 2, "toy_window")
    assert isinstance(sf.train, TrainConfig) and (sf.train.lr, sf.train.max_steps) == (1e-4, 50)
    assert warm.stages == [] and sf.name == "toy"


def test_plugin_checks_see_the_stage_and_blame_where_the_plugin_was_set():
    """A plugin's ``check`` runs against the experiment as each stage sees it (merged train); its problem
    is reported at the stage's override, or once at the top level when the stage inherits the plugin."""
    class Checked(FAKES[("memory", "toy_window")]):
        @classmethod
        def check(cls, config, experiment):
            clip = experiment.train.clip_frames
            return [("window_frames", config.window_frames, f"above clip {clip}")] if config.window_frames > clip else []

    stage = {"name": "a", "trainer": {"type": "toy_trainer"}}
    with registry.register("memory", "checked", Checked, replace=True):
        raw = {**MINIMAL, "memory": {"type": "checked", "window_frames": 12}, "train": {"clip_frames": 8},
               "stages": [stage, {**stage, "name": "b"}, {**stage, "name": "c", "train": {"clip_frames": 16}},
                          {**stage, "name": "d", "memory": {"type": "checked", "window_frames": 20}}]}
        found = issues(raw)
        assert set(found) == {"memory.window_frames", "stages[3].memory.window_frames"}  # c's clip is 16: fine
        assert found["memory.window_frames"][:2] == (12, "above clip 8")
        assert found["stages[3].memory.window_frames"][:2] == (20, "above clip 8")
        raw["train"]["clip_frames"] = 16
        raw["stages"].pop()
        config.validate(raw)  # every stage sees a clip of 16


def test_a_stage_without_a_trainer_uses_the_top_level_one_and_unused_plugins_are_named():
    from worldkit.stages import resolve_stages

    raw = {**MINIMAL, "trainer": {"type": "toy_trainer", "exit_steps": 3},
           "stages": [{"name": "a"}, {"name": "b", "trainer": {"type": "diffusion_forcing"}}]}
    cfg = config.validate(raw)
    a, b = resolve_stages(cfg)
    assert a.trainer == {"type": "toy_trainer", "exit_steps": 3} and b.trainer["type"] == "diffusion_forcing"
    assert cfg.warnings() == []  # stage a uses the top-level trainer
    raw["stages"][0]["trainer"] = {"type": "toy_trainer"}
    unused = config.validate(raw).warnings()
    assert len(unused) == 1 and unused[0].startswith("trainer: unused, every stage sets its own trainer")
    raw.pop("trainer")  # not given: nothing to say, though a default fills it in
    assert config.validate(raw).warnings() == []
    found = issues({**MINIMAL, "stages": [{"name": "../up"}]})
    assert "must name a folder" in found["stages[0].name"][1]


def test_stage_errors_name_the_stage():
    stage = {"name": "a", "trainer": {"type": "toy_trainer"}}
    found = issues({**MINIMAL, "stages": [stage, {**stage, "train": {"lr": "fast", "bogus": 1, "clip_frames": 9}}]})
    assert found["stages[1].train.lr"][0] == "fast"
    assert "allowed:" in found["stages[1].train.bogus"][1] and "clip_frames" in found["stages[1].train.bogus"][1]
    found = issues({**MINIMAL, "stages": [stage, {**stage, "train": {"clip_frames": 9}}]})
    assert found["stages[1].train.clip_frames"][0] == 9
    found = issues({**MINIMAL, "stages": [stage, stage]})
    assert "unique" in found["stages[1].name"][1]


# --------------------------------------------------------------------------------------------------
# --set


def test_switching_a_plugin_keeps_only_the_settings_the_new_one_has():
    raw = {**MINIMAL, "memory": {"type": "toy_window", "window_frames": 8}}
    cfg = config.validate(raw, "x.yaml", config.apply_overrides(raw, ["memory.type=dense"]))
    assert cfg.memory.type == "dense" and raw["memory"] == {"type": "dense"}
    raw = {**MINIMAL, "memory": {"type": "toy_window", "window_frames": 8}}
    config.apply_overrides(raw, ["memory.type=toy_window"])  # the same plugin: nothing dropped
    assert raw["memory"] == {"type": "toy_window", "window_frames": 8}
    found = issues({**MINIMAL, "memory": {"type": "toy_window", "window_frames": 8}}, ["memory.type=toy_windw"])
    assert "did you mean 'toy_window'" in found["memory.type"][1]  # an unknown name: reported, nothing dropped


def test_overrides_coerce_values_as_yaml():
    raw = {**MINIMAL, "stages": [{"name": "s", "trainer": {"type": "toy_trainer"}}]}
    applied = config.apply_overrides(raw, [
        "model.width=256", "eval.horizons=[1,4]", "memory.type=toy_window", "memory.window_frames=3",
        "train.devices=auto", "stages[0].train.lr=1e-4", "stages.0.trainer.exit_steps=5", "model.init=",
    ])
    cfg = config.validate(raw, "x.yaml", applied)
    assert cfg.model.width == 256 and isinstance(cfg.model.width, int)
    assert cfg.eval.horizons == [1, 4]
    assert (cfg.memory.type, cfg.memory.config.window_frames) == ("toy_window", 3)
    assert cfg.train.devices == "auto"
    assert cfg.stage_config(cfg.stages[0]).train.lr == 1e-4
    assert cfg.stages[0].trainer.config.exit_steps == 5
    assert cfg.model.init is None


def test_override_of_an_absent_plugin_field_starts_from_its_default():
    raw = copy.deepcopy(MINIMAL)
    with pytest.raises(ConfigError) as err:
        config.apply_overrides(raw, ["memory.window_frames=3"])  # default memory is the fake dense: no such key
    assert "keys available there: type" in err.value.lines()[0]
    config.apply_overrides(raw, ["memory.type=toy_window"])
    config.apply_overrides(raw, ["memory.window_frames=3"])
    assert raw["memory"] == {"type": "toy_window", "window_frames": 3}


@pytest.mark.parametrize(
    "override, path, words",
    [
        ("model.widht=256", "model.widht", "(did you mean 'width'?); keys available there: patch, width"),
        ("modle.width=256", "modle.width", "did you mean 'model'?"),
        ("memory.type=toy_window", None, None),
        ("model.width.deep=1", "model.width.deep", "model.width is a value, not a section"),
        ("stages[2].name=x", "stages[2].name", "stages is not given, so it has no items to index"),
        ("model..width=1", "model..width", "malformed path"),
        ("train.devices.x=1", "train.devices.x", "train.devices is a value"),
        ("eval.horizons[0]=1", "eval.horizons[0]", "set it whole: eval.horizons=[...]"),
        ("model.width", "model.width", "expected KEY=VALUE"),
        ("model.width=[1", "model.width", "invalid YAML"),
    ],
)
def test_bad_override_paths_name_the_path_and_the_keys_there(override, path, words):
    raw = copy.deepcopy(MINIMAL)
    if path is None:
        config.apply_overrides(raw, [override])
        return
    with pytest.raises(ConfigError) as err:
        config.apply_overrides(raw, [override])
    (issue,) = err.value.issues
    assert err.value.source == "--set" and issue.path == path and words in issue.message
    assert err.value.lines()[0].startswith(f"--set: {path}: ")


def test_override_through_a_section_of_the_wrong_shape_is_refused():
    raw = {**MINIMAL, "stages": [{"name": "a", "trainer": {"type": "toy_trainer"}}]}
    with pytest.raises(ConfigError, match=re.escape("no item 1 in stages, which has 1 items")):
        config.apply_overrides(raw, ["stages[1].name=b"])
    for raw, override, words in [
        ({**MINIMAL, "model": [1]}, "model.width=3", "model is [1], not a section"),
        ({**MINIMAL, "stages": {"a": 1}}, "stages[0].name=x", "stages is {'a': 1}, not a list"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            config.apply_overrides(copy.deepcopy(raw), [override])


def test_bad_override_values_are_blamed_on_the_override():
    found = issues(MINIMAL, ["model.width=abc", "train.lr=-1"])
    assert found["model.width"][0] == "abc" and found["model.width"][2] == "--set model.width=abc"
    assert found["train.lr"][2] == "--set train.lr=-1"


# --------------------------------------------------------------------------------------------------
# Files


def test_load_round_trips_through_to_yaml(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({
        **MINIMAL, "memory": {"type": "toy_window"},
        "stages": [{"name": "s", "trainer": {"type": "toy_trainer"}, "train": {"lr": 0.1}}],
    }))
    cfg = config.load(path, ["model.width=64"])
    text = config.to_yaml(cfg)
    assert yaml.safe_load(text)["memory"] == {"type": "toy_window", "window_frames": 4}
    again = tmp_path / "again.yaml"
    config.save(cfg, again)
    assert again.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.yaml", "x.yaml"]  # no temporary file left
    assert config.load(again) == cfg


def test_yaml_syntax_errors_and_duplicate_keys_name_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: toy\nenv: {type: toy_env\nmodel: {}\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert err.value.source == str(path) and err.value.issues[0].path.startswith("line ")
    path.write_text("name: toy\nenv: {type: toy_env}\nname: other\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert err.value.issues[0].path.startswith("line 3") and "duplicate key 'name' (first at line 1)" in str(err.value)


def test_top_level_must_be_a_mapping_and_the_file_must_exist(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        config.load(path)
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "absent.yaml")


def test_cache_dir_default_comes_from_worldkit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLDKIT_CACHE", str(tmp_path))
    assert config.validate(copy.deepcopy(MINIMAL)).data.cache_path == tmp_path
    explicit = config.validate({**MINIMAL, "data": {"cache_dir": "~/elsewhere"}})
    assert explicit.data.cache_dir == "~/elsewhere"
    monkeypatch.delenv("WORLDKIT_CACHE")
    assert config.validate(copy.deepcopy(MINIMAL)).data.cache_dir == "~/.cache/worldkit"


def test_python_construction_validates_plugin_fields_too():
    cfg = ExperimentConfig(name="py", env={"type": "toy_env"}, memory=PluginSpec.validate("memory", {"type": "dense"}))
    assert cfg.memory.type == "dense"
    with pytest.raises(Exception, match="expected a memory plugin, got a env plugin"):
        ExperimentConfig(name="py", env={"type": "toy_env"}, memory=cfg.env)


def test_exponent_floats_parse_as_numbers():
    """YAML 1.1 reads 1e-4 (no dot) as a string; --set selector.top_k=1e-1 must give a number."""
    assert config.parse_yaml("1e-4", "x") == 1e-4 and config.parse_yaml("-2E+3", "x") == -2000.0
    assert config.parse_yaml("1.5e2", "x") == 150.0 and config.parse_yaml("7", "x") == 7
    assert config.parse_yaml("1e", "x") == "1e" and config.parse_yaml("e5", "x") == "e5"
    assert config.validate({**MINIMAL, "train": config.parse_yaml("{lr: 3e-4}", "x")}).train.lr == 3e-4


def test_a_validators_message_reads_as_written():
    """pydantic's 'Value error, ' prefix is dropped, and a value the message already names is not repeated."""
    from pydantic import field_validator

    class Picky(PluginConfig):
        k: int = 1

        @field_validator("k")
        @classmethod
        def _positive(cls, v):
            if v < 1:
                raise ValueError(f"must be >= 1; got {v}")
            return v

    picky = type("PickyMemory", (FAKES[("memory", "toy_window")],), {"Config": Picky})
    with registry.register("memory", "picky", picky, replace=True):
        with pytest.raises(ConfigError) as err:
            config.validate({**MINIMAL, "memory": {"type": "picky", "k": 0}}, "x.yaml")
    (line,) = err.value.lines()
    assert line == "x.yaml: memory.k: must be >= 1; got 0"
    with pytest.raises(ConfigError) as err:
        config.validate({**MINIMAL, "model": {"width": 130, "heads": 4}}, "x.yaml")
    assert err.value.lines() == ["x.yaml: model.heads: must divide model.width=130 (got 4)"]


def test_resolved_yaml_reads_back_the_same_config():
    """A string that YAML 1.2 would read as a number is quoted; a top-level plugin that every stage
    replaces is left out, so the saved file raises no warning when loaded again."""
    raw = {**MINIMAL, "trainer": {"type": "toy_trainer"},
           "stages": [{"name": "1e3", "trainer": {"type": "toy_trainer"}}, {"name": "self forcing",
                                                                            "trainer": {"type": "toy_trainer"}}]}
    cfg = config.validate(copy.deepcopy(raw))
    assert len(cfg.warnings()) == 1  # the trainer written at the top is replaced by every stage
    text = config.to_yaml(cfg)
    assert "'1e3'" in text and "\ntrainer:" not in text
    again = config.validate(config.parse_yaml(text, "saved"))
    assert again.model_dump(exclude={"trainer"}) == cfg.model_dump(exclude={"trainer"}) and again.warnings() == []
    from worldkit.stages import resolve_stages

    assert resolve_stages(again) == resolve_stages(cfg)  # what runs is the same
    for bad in ("a/b", "..", "a\\b", ""):
        assert "stages[0].name" in issues({**MINIMAL, "stages": [{"name": bad}]})


def test_more_eval_episodes_than_held_out_is_a_warning():
    cfg = config.validate({**MINIMAL, "data": {"test_episodes": 4}, "eval": {"episodes": 8}})
    assert cfg.warnings() == ["eval.episodes: 8, but data.test_episodes=4: evaluation uses the 4 held-out "
                              "episodes there are"]


def test_a_variant_is_blamed_only_for_its_own_train_settings():
    stage = {"name": "a", "trainer": {"type": "toy_trainer"}, "train": {"clip_frames": 9}}
    for variant in ({"name": "v"}, {"name": "v", "train": {"lr": 0.001}}):
        found = issues({**MINIMAL, "stages": [stage], "compare": [variant]})
        assert "stages[0].train.clip_frames" in found and "compare[0].train.clip_frames" not in found
    found = issues({**MINIMAL, "compare": [{"name": "v", "train": {"clip_frames": 7}}],
                    "stages": [{"name": "a", "trainer": {"type": "toy_trainer"}}]})
    assert found["compare[0].train.clip_frames"][0] == 7


def test_a_stage_folder_name_parses_back_to_its_index_and_name():
    from worldkit.stages import parse_dirname, resolve_stages

    cfg = config.validate({**MINIMAL, "stages": [{"name": "warm-up"}, {"name": "sparse_forcing_dmd"}]})
    assert [parse_dirname(s.dirname) for s in resolve_stages(cfg)] == [(0, "warm-up"), (1, "sparse_forcing_dmd")]
