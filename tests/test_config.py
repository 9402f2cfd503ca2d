"""The typed config tree: presets, overrides, one-line errors naming the field."""

import pytest

from taskgrad.config import Config, ConfigError, load_config, parse_overrides, preset_names, to_dict


def test_defaults_are_the_testbed_mix():
    cfg = load_config()
    assert [t.name for t in cfg.tasks] == ["code", "countdown", "table_qa"]
    assert cfg.model.name_or_path == "tiny" and cfg.steps == 100 and cfg.eval.samples == 4


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
        # nonsense values a run used to accept silently
        (["grpo.clip_eps=-0.2"], "grpo.clip_eps: need a number > 0"),
        (["grpo.clip_eps=0"], "grpo.clip_eps: need a number > 0"),
        (["grpo.clip_eps_high=-1"], "grpo.clip_eps_high: need a number > 0 or null"),
        (["grpo.kl_coef=-0.1"], "grpo.kl_coef: need a number >= 0"),
        (["grpo.loss_constant=0"], "grpo.loss_constant: need a positive integer"),
        (["optim.weight_decay=-1"], "optim.weight_decay: need a number >= 0"),
        (["optim.betas=[0.9, 1.0]"], "optim.betas[1]: need a number in [0, 1)"),
        (["optim.betas=[-0.1, 0.99]"], "optim.betas[0]: need a number in [0, 1)"),
        (["optim.eps=0"], "optim.eps: need a number > 0"),
        (["optim.max_grad_norm=-1"], "optim.max_grad_norm: need >= 0"),
        (["optim.warmup_steps=-1"], "optim.warmup_steps: need 0 <= warmup_steps < steps"),
        (["steps=10", "optim.warmup_steps=10"], "optim.warmup_steps: need 0 <= warmup_steps"),
        (["optim.max_skipped_steps=0"], "optim.max_skipped_steps: need >= 1"),
        (["optim.lr=.nan"], "optim.lr: need a finite number"),
        (["tasks=[{name: arithmetic, weight: .inf}]"], "tasks[0].weight: need a finite number"),
        (["rollout.top_p=1.5"], "rollout.top_p: must be in (0, 1]"),
        (["eval.max_new_tokens=0"], "eval.max_new_tokens: need a positive integer or null"),
        (["diagnostics.gain_window=-1"], "diagnostics.gain_window: need >= 0"),
        (["diagnostics.probe_every=-1"], "diagnostics.probe_every: need >= 0"),
        (["diagnostics.probe_size=0"], "diagnostics.probe_size: need >= 1"),
        (["diagnostics.probe_samples=0"], "diagnostics.probe_samples: need >= 1"),
        (["diagnostics.one_step_at=[0, 5]"], "diagnostics.one_step_at: need training steps"),
        (["diagnostics.scope=["], "diagnostics.scope: invalid regex '['"),
        (["model.max_prompt_tokens=0"], "model.max_prompt_tokens: need > 0"),
        (["model.tiny.num_heads=3"], "model.tiny.hidden_size: need a multiple of num_heads"),
        (["seed=-1"], "seed: need an integer in [0, 2**32)"),
        (["checkpoint_minutes=-5"], "checkpoint_minutes: need >= 0"),
        (["eval.size=0"], "eval.size: must be positive"),
        # malformed YAML in an override meant as a list or mapping
        (["optim.betas=[0.9, 0.99"], "(override optim.betas:1:11: invalid YAML"),
        (["tasks=[{name: code"], "(override tasks:1:"),
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


def test_malformed_preset_file_names_file_and_line(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("steps: 10\noptim: {lr: [1e-3,\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    message = str(info.value)
    assert message.startswith(f"{bad}:") and "invalid YAML" in message and "\n" not in message


def test_missing_preset_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "absent.yaml"))


def test_strings_that_are_not_yaml_still_pass_as_strings():
    # not YAML, but a fine regex and a fine run name
    cfg = load_config(None, ["diagnostics.scope=[qk]_proj", "run_name=x: y: z"])
    assert cfg.diagnostics.scope == "[qk]_proj" and cfg.run_name == "x: y: z"
