"""The policy path: any model directory through from_pretrained, chat templates, the tiny cache."""

from __future__ import annotations

import json

import pytest
import torch

from taskgrad.config import ModelConfig, TaskSpec, TinyModelConfig, load_config
from taskgrad.policy import (
    build_char_tokenizer,
    build_tiny_model,
    ensure_tiny_model,
    format_prompts,
    load_policy,
)
from taskgrad.rollout import generate, response_mask_from_ids
from taskgrad.tasks import build_tasks
from taskgrad.train import train

TINY = TinyModelConfig(
    hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
    warmstart_steps=5, warmstart_batch=8,
)  # fmt: skip
CHAT = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def test_char_tokenizer_round_trip(tmp_path):
    tok = build_char_tokenizer()
    text = "f(x): mul 3 add 1; f(2)=7:\n{}~"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids


def test_response_mask_stops_after_first_eos():
    eos = 2
    ids = torch.tensor([[5, 6, eos, 0, 0], [5, eos, 7, eos, 0], [5, 6, 7, 8, 9]])
    # up to and including the first EOS; a row without EOS keeps every token
    assert response_mask_from_ids(ids, eos).tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1],
    ]


def test_tiny_model_is_cached_by_recipe(tmp_path):
    cfg = ModelConfig(cache_dir=str(tmp_path), tiny=TINY)
    specs = [TaskSpec("arithmetic")]
    tasks = build_tasks(specs, eval_size=4, seed=0)
    first = ensure_tiny_model(cfg, specs, tasks, log=lambda *_: None)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(cfg, specs, tasks, log=lambda *_: None) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    recipe = json.loads((first / "recipe.json").read_text())
    assert recipe["tiny"]["warmstart_steps"] == 5
    cfg.tiny = TinyModelConfig(**{**recipe["tiny"], "warmstart_steps": 6})
    assert ensure_tiny_model(cfg, specs, tasks, log=lambda *_: None) != first  # recipe changed


def test_the_recipe_alone_decides_the_tiny_model(tmp_path):
    """The warm start runs on one torch thread whatever the caller's setting (and restores it):
    with several threads, CPU reductions add in another order and the same recipe gave another
    model (final warm-start loss 0.225 instead of 0.255 for the default recipe with 2 threads)."""
    from safetensors.torch import load_file

    specs = [TaskSpec("arithmetic"), TaskSpec("table_qa")]
    tasks = build_tasks(specs, eval_size=4, seed=0)
    tiny = TinyModelConfig(warmstart_steps=3)  # the default width: threads split its matmuls
    weights, before = {}, torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            cfg = ModelConfig(cache_dir=str(tmp_path / f"threads{threads}"), tiny=tiny)
            path = ensure_tiny_model(cfg, specs, tasks, log=lambda *_: None)
            assert torch.get_num_threads() == threads
            weights[threads] = load_file(path / "model.safetensors")
    finally:
        torch.set_num_threads(before)
    assert weights[1].keys() == weights[2].keys()
    for name, tensor in weights[1].items():
        assert torch.equal(tensor, weights[2][name]), name


def test_warm_start_never_sees_a_held_out_prompt_of_either_split(tmp_path, monkeypatch):
    """The cached model is shared by test runs and tuning runs: its demonstrations avoid the
    test and the tune set, whichever split built it; weights and loss scales do not change it,
    the held-out size does."""
    import taskgrad.policy as P

    seen: list[str] = []
    real = P.sft_batch
    monkeypatch.setattr(
        P, "sft_batch", lambda tok, p, t, *a: (seen.extend(p), real(tok, p, t, *a))[1]
    )
    specs = [TaskSpec("countdown", options={"num_numbers": 2, "max_number": 5})]  # ~50 prompts
    held = set()
    for split in ("test", "tune"):
        held |= {
            s.prompt
            for s in build_tasks(specs, eval_size=8, seed=0, eval_split=split)[0].eval_set()
        }
    cfg = ModelConfig(cache_dir=str(tmp_path), tiny=TINY)
    tuning = build_tasks(specs, eval_size=8, seed=0, eval_split="tune")
    first = ensure_tiny_model(cfg, specs, tuning, log=lambda *_: None)
    assert len(seen) == TINY.warmstart_steps * TINY.warmstart_batch and len(held) == 16
    assert not held & set(seen)
    scaled = [TaskSpec("countdown", options=specs[0].options, weight=3.0, loss_scale=10.0)]
    assert ensure_tiny_model(cfg, scaled, tuning, log=lambda *_: None) == first
    other = build_tasks(specs, eval_size=4, seed=0)
    assert ensure_tiny_model(cfg, specs, other, log=lambda *_: None) != first


@pytest.fixture
def chat_model_dir(tmp_path):
    """A tiny model saved as an ordinary directory whose tokenizer has a chat template."""
    tok = build_char_tokenizer()
    tok.chat_template = CHAT
    model = build_tiny_model(tok, TINY, seed=0)
    path = tmp_path / "chat-model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_chat_template_is_applied_when_present(chat_model_dir):
    model, tok = load_policy(str(chat_model_dir), ModelConfig())
    assert tok.padding_side == "left"
    [text] = format_prompts(tok, ["2+2="], "auto")
    assert text == "[user] 2+2=\n[assistant] "
    assert format_prompts(tok, ["2+2="], "never") == ["2+2="]
    from taskgrad.tasks import Sample

    rollout = generate(
        model, tok, [Sample("arithmetic", "2+2=", "4")], [0], group_size=3, max_new_tokens=4,
        temperature=1.0, top_p=1.0, seed=0,
    )  # fmt: skip
    prompt = tok.decode(rollout.input_ids[0, : rollout.prompt_len], skip_special_tokens=True)
    assert prompt == "[user] 2+2=\n[assistant] "
    assert rollout.input_ids.shape == (3, rollout.prompt_len + 4)


def test_training_a_model_given_by_path(tmp_path, chat_model_dir):
    """The code path of a hub id: `model=<dir>` loads through from_pretrained, no tiny build."""
    overrides = [
        f"model={chat_model_dir}", "tasks=arithmetic", "steps=2", "rollout.prompts_per_task=2",
        "rollout.group_size=2", "rollout.max_new_tokens=4", "eval.every=0", "progress=false",
        "diagnostics.probe_every=0", f"runs_root={tmp_path}/runs",
    ]  # fmt: skip
    run = train(load_config(None, overrides))
    versions = json.loads((run / "versions.json").read_text())
    assert versions["model_path"] == str(chat_model_dir)
    assert (run / "checkpoints" / "step_000002" / "model.safetensors").exists()


@pytest.mark.gpu
def test_default_mix_on_cuda(tmp_path):
    overrides = [
        "device=cuda", "model.dtype=bfloat16", "steps=2", "eval.every=0", "progress=false",
        f"runs_root={tmp_path}", f"model.cache_dir={tmp_path}/cache",
    ]  # fmt: skip
    run = train(load_config(None, overrides))
    assert json.loads((run / "versions.json").read_text())["device"].startswith("cuda")


def test_saved_tiny_model_keeps_spaces_and_newlines(tmp_path):
    """Regression: AutoTokenizer on a Qwen2 model dir picked a BPE class that dropped spaces."""
    tok = build_char_tokenizer()
    build_tiny_model(tok, TINY, seed=0).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, loaded = load_policy(str(tmp_path), ModelConfig())
    text = "make 13 from 3 5 2:\na=3 b=7"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text


def _dataset_spec(path) -> TaskSpec:
    return TaskSpec("rows", type="dataset", options={"path": str(path), "reward": "exact"})


def test_tiny_cache_key_follows_the_dataset_contents(tmp_path, monkeypatch):
    """Editing a dataset in place (same path) must not reuse a model warm-started on the old rows;
    files over HASH_LIMIT are keyed by size and mtime instead of their bytes."""
    import taskgrad.policy as P

    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    cfg = ModelConfig(tiny=TINY)
    key = lambda: json.dumps(P.tiny_recipe(cfg, [_dataset_spec(data)], 64), sort_keys=True)  # noqa: E731
    before = key()
    assert key() == before  # stable
    data.write_text('{"prompt": "1+2=", "answer": "3"}\n')
    assert key() != before
    monkeypatch.setattr(P, "HASH_LIMIT", 4)
    assert "size:" in P.file_fingerprints([_dataset_spec(data)])[str(data)]
    # procedural tasks name no files: their recipe has no "files" entry
    assert "files" not in P.tiny_recipe(cfg, [TaskSpec("arithmetic")], 64)


def test_warm_start_truncates_a_huge_row(tmp_path):
    """A 10 MB row used to make the warm start allocate tens of GB; now prompts and answers keep
    their first model.max_prompt_tokens tokens."""
    from taskgrad.policy import sft_batch

    tok = build_char_tokenizer()
    huge = "9" * 10_000_000
    batch = sft_batch(tok, [huge, "1+1="], [huge, "2"], max_tokens=16)
    assert batch["input_ids"].shape == (2, 16 + 16 + 1)  # <s> + 15 prompt, 16 answer, </s>
    assert int(batch["input_ids"][0, 0]) == tok.bos_token_id
    assert int((batch["labels"][0] != -100).sum()) == 17  # 16 answer tokens and </s>
    data = tmp_path / "big.jsonl"
    row = huge[:1_000_000]  # 1 MB: before, one 2M-token sequence could not be allocated
    data.write_text(
        json.dumps({"prompt": row, "answer": row}) + "\n" + '{"prompt": "a", "answer": "b"}\n'
    )
    spec = _dataset_spec(data)
    tasks = build_tasks([spec], eval_size=1, seed=0)
    cfg = ModelConfig(tiny=TINY, max_prompt_tokens=32, cache_dir=str(tmp_path / "cache"))
    path = ensure_tiny_model(cfg, [spec], tasks, log=lambda *_: None)
    assert (path / "recipe.json").exists()
