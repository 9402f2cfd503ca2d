"""The typed config tree: presets, overrides, one-line errors naming the field."""

import pytest

from taskgrad.config import Config, ConfigError, load_config, parse_overrides, preset_names, to_dict


def test_defaults_are_the_four_task_mix():
    cfg = load_config()
    assert [t.name for t in cfg.tasks] == ["code", "countdown", "arithmetic", "table_qa"]
    assert cfg.model.name_or_path == "tiny"


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["optim.lr=1e-3", "grpo.scale_rewards=false", "tasks=arithmetic,code"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.grpo.scale_rewards is False
    assert [t.name for t in cfg.tasks] == ["arithmetic", "code"]


def test_model_shorthand():
    cfg = load_config(None, ["model=Qwen/Qwen2.5-0.5B-Instruct"])
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_resolves(name):
    cfg = load_config(name)
    assert cfg.preset == name and cfg.tasks


def test_math3_preset_via_override():
    cfg = load_config(None, ["preset=math3"])
    assert [t.name for t in cfg.tasks] == ["multistep", "linear_eq", "arithmetic"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["optim.lrr=1"], "unknown key 'optim.lrr'"),
        (["nonsense=1"], "unknown key 'nonsense'"),
        (["grpo.loss_agg=median"], "grpo.loss_agg: invalid value 'median'"),
        (["steps=ten"], "steps: expected an integer"),
        (["steps=0"], "steps: must be positive"),
        (["tasks=arithmetic,chess"], "unknown task 'chess'"),
        (["rollout.group_size=1"], "rollout.group_size"),
        (["preset=nope"], "unknown preset 'nope'"),
        (["optim.betas=[0.9]"], "optim.betas: expected 2 values"),
        (["rollout.backend=sglang"], "rollout.backend: invalid value 'sglang'"),
        (["grpo.rollout_is_cap=2"], "grpo.rollout_is_cap: need rollout.backend=vllm"),
        (["rollout.backend=vllm", "grpo.rollout_is_cap=0"], "grpo.rollout_is_cap: need a positive"),
        (["rollout.backend=vllm", "rollout.seeding=batch"], "rollout.seeding: need"),
        (["model.lora.r=-1"], "model.lora.r: need >= 0"),
        (["model.lora.r=8", "model.lora.target_modules=[]"], "model.lora.target_modules: need"),
        (["model.lora.dropout=1"], "model.lora.dropout: need in [0, 1)"),
        (["parallel.mode=zero"], "parallel.mode: invalid value 'zero'"),
    ],
)
def test_bad_config_one_line_error_naming_the_field(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, override)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_round_trip_of_resolved_config():
    from taskgrad.config import from_dict

    cfg = load_config(None, ["seed=3", "diagnostics.transfer_at=[5, 10]"])
    again = from_dict(Config, to_dict(cfg))
    assert again == cfg


def test_parse_overrides_rejects_missing_equals():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["optim.lr"])
