"""taskgrad inside TRL's GRPOTrainer, against plain GRPOTrainer (TRL 1.16; CI installs it).

Setting: a tiny Qwen2 (hidden 32, 2 layers, tied embeddings, taskgrad's character tokenizer,
random weights, saved with save_pretrained), 3 tasks x 2 prompts x 4 completions, at most 8 new
tokens, float32, one process on the CPU. Micro-batches of 4 rows, so one (task, half) group is one
micro-batch and gradient_accumulation_steps = 6. Every trainer starts from the same saved weights
with the same seed, so all of them see the same prompts and, given the RNG parity, the same
completions (checked).

Tolerance: relative L2 1e-5 on gradients, 1e-5 absolute on parameters after a few AdamW steps at
lr 1e-3. Regrouping rows changes only the float32 summation order, and TRL's fused LM head
accumulates the tied embedding's gradient in float32 (trl/kernels/chunked_logprob.py), so the
measured gaps are ~1e-7 relative; a dropped group or a misattributed row is > 1e-2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl", reason="TRL is not installed (pip install 'taskgrad[trl]')")

from datasets import Dataset
from transformers import AutoModelForCausalLM
from transformers.trainer_callback import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from taskgrad import metrics as M
from taskgrad.balancing import STRATEGIES, TaskGradStats
from taskgrad.config import TinyModelConfig, validate
from taskgrad.integrations import trl_batch as TB
from taskgrad.integrations.trl import (
    STATE_FILE,
    TaskGradGRPOTrainer,
    UnsupportedSetting,
    check_supported,
)
from taskgrad.policy import build_char_tokenizer, build_tiny_model, load_tokenizer
from taskgrad.rundir import RunDir

pytestmark = pytest.mark.slow

TASKS = ("digit", "upper", "vowel")
G, MAX_NEW = 4, 8
GRAD_REL_TOL, PARAM_TOL = 1e-5, 1e-5
EXACT_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "sapo", "luspo", "cispo", "vespo")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tok = build_char_tokenizer()
    tiny = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                           intermediate_size=64)  # fmt: skip
    model = build_tiny_model(tok, tiny, seed=0)
    path = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def dataset(prompts_per_task: int = 2) -> Dataset:
    """Rows sorted by task: with shuffle_dataset=False TRL's own sampler yields this order."""
    rows = [{"prompt": f"{t} #{j}:", "task": t} for t in TASKS for j in range(prompts_per_task)]
    return Dataset.from_list(rows)


def reward(prompts, completions, task, **kwargs) -> list[float]:
    """One reward function for every task, switching on the dataset's task column."""
    out = []
    for text, name in zip(completions, task, strict=True):
        n = max(len(text), 1)
        if name == "digit":
            out.append(sum(c.isdigit() for c in text) / n)
        elif name == "upper":
            out.append(sum(c.isupper() for c in text) / n)
        else:
            out.append(sum(c in "aeiou" for c in text) / n)
    return out


def grpo_args(out: Path, loss_type: str = "dapo", steps: int = 2, **kw) -> GRPOConfig:
    args = dict(
        output_dir=str(out), per_device_train_batch_size=G, num_generations=G,
        gradient_accumulation_steps=2 * len(TASKS), max_completion_length=MAX_NEW,
        max_steps=steps, learning_rate=1e-3,
        loss_type=loss_type, bf16=False, use_cpu=True, seed=0, logging_steps=1, report_to="none",
        save_strategy="no", disable_tqdm=True, shuffle_dataset=False,
    )  # fmt: skip
    if loss_type == "luspo":  # TRL's recommended setting for luspo
        args["importance_sampling_level"] = "sequence"
    args.update(kw)
    return GRPOConfig(**args)


class Record:
    """Records, where Trainer clips (after the window's last backward): the gradient, and for
    taskgrad the group buffers and shares; and every training generation batch's completions."""

    at_clip = None  # optional hook(trainer, model), run before recording

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rec = SimpleNamespace(grads=[], buffers=[], shares=[], completions=[], extra=[])
        self.remove_callback(PrinterCallback)

    def _clip_grad_norm(self, model):
        if self.at_clip is not None:
            self.rec.extra.append(self.at_clip(model))
        self.rec.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        if hasattr(self, "tg"):
            self.rec.buffers.append(self.tg.groups.buffer.clone())
            self.rec.shares.append(self.tg_generation.shares.clone())
        return super()._clip_grad_norm(model)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.rec.completions.append(out["completion_ids"].clone())
            ids = {t: k for k, t in enumerate(TASKS)}  # survives TRL's shuffle and split
            out["tg_task"] = torch.tensor([ids[x["task"]] for x in inputs])
        return out


class Plain(Record, GRPOTrainer):
    pass


class Ours(Record, TaskGradGRPOTrainer):
    pass


def train(cls, model_dir: Path, args: GRPOConfig, data: Dataset | None = None, **kw):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = cls(model=model, reward_funcs=reward, args=args, processing_class=load_tokenizer(
        str(model_dir)), train_dataset=data if data is not None else dataset(), **kw)  # fmt: skip
    trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return trainer, params


def rel_l2(a: dict, b: dict) -> float:
    num = sum(((a[n] - b[n]) ** 2).sum() for n in b) ** 0.5
    return float(num / sum((v**2).sum() for v in b.values()) ** 0.5)


def max_abs(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in b)


def as_dict(trainer, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    g = trainer.tg.groups
    return {n: flat[lo:hi].view_as(p) for (n, p), lo, hi in
            zip(g.params, g.offsets[:-1], g.offsets[1:], strict=True)}  # fmt: skip


def same_batches(a, b) -> bool:
    pairs = zip(a.rec.completions, b.rec.completions, strict=True)
    return len(a.rec.completions) > 0 and all(torch.equal(x, y) for x, y in pairs)


# --- the decomposition -------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", [*EXACT_LOSS_TYPES, "bnpo"])
def test_group_gradients_sum_to_plain_trls_gradient(model_dir, tmp_path, loss_type):
    args = grpo_args(tmp_path, loss_type, steps=2)
    plain, _ = train(Plain, model_dir, args)
    ours, _ = train(Ours, model_dir, args)
    assert same_batches(plain, ours)
    for step in range(2):
        total = as_dict(ours, ours.rec.buffers[step].sum(0))
        assert max_abs(total, ours.rec.grads[step]) == 0.0  # .grad is the sum of the groups
        rel = rel_l2(total, plain.rec.grads[step])
        print(f"{loss_type} step {step + 1}: sum of groups vs plain TRL, rel L2 {rel:.2e}")
        assert rel < GRAD_REL_TOL
    assert abs(float(ours.rec.shares[0].sum()) - 1.0) < 1e-6


def test_uniform_leaves_trls_update_unchanged(model_dir, tmp_path):
    """Plain, unmodified GRPOTrainer vs ours after 4 optimizer steps, parameters equal."""
    args = grpo_args(tmp_path, "dapo", steps=4)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    plain = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset(),
                        processing_class=load_tokenizer(str(model_dir)))  # fmt: skip
    plain.train()
    p_plain = {n: p.detach().clone() for n, p in plain.model.named_parameters()}
    _, p_ours = train(Ours, model_dir, grpo_args(tmp_path / "ours", "dapo", steps=4))
    diff = max_abs(p_ours, p_plain)
    moved = max_abs(p_ours, {n: p for n, p in AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32).named_parameters()})  # fmt: skip
    print(f"uniform, 4 steps: max |param diff| {diff:.2e} (max |param change| {moved:.2e})")
    assert moved > 1e-3 and diff < PARAM_TOL


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo"])
def test_several_generation_batches_with_the_stratified_sampler(model_dir, tmp_path, loss_type):
    """6 prompts per task, 2 drawn per task per batch (shuffled), num_iterations=2: plain TRL on
    the same sampler, parameters equal after 4 optimizer steps (2 generation batches)."""

    class PlainSampled(Plain):
        def _get_train_sampler(self, dataset=None):
            plan = TB.BatchPlan(TASKS, (2, 2, 2), G, 1, G)
            task_of_row = [TASKS.index(t) for t in self.train_dataset["task"]]
            return TB.TaskStratifiedRepeatSampler(
                task_of_row, plan, repeat_count=2 * self.args.steps_per_generation,
                shuffle=True, seed=self.args.seed,
            )  # fmt: skip

    data = dataset(prompts_per_task=6)
    args = grpo_args(tmp_path, loss_type, steps=4, num_iterations=2, shuffle_dataset=True)
    plain, p_plain = train(PlainSampled, model_dir, args, data)
    ours, p_ours = train(Ours, model_dir, args, data)
    assert same_batches(plain, ours) and len(ours.rec.completions) == 2
    diff = max_abs(p_ours, p_plain)
    print(f"{loss_type}, sampler, num_iterations=2: max |param diff| {diff:.2e}")
    assert diff < PARAM_TOL


def masked_task_gradients(trainer, model) -> torch.Tensor:
    """Plain TRL's route to per-task gradients: the step's micro-batches (TRL's shuffle) again,
    with the other tasks' advantages set to 0, one backward per task: [K, P]."""
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    out = []
    for k in range(len(TASKS)):
        total = [torch.zeros_like(p) for p in params]
        for mb in trainer._buffered_inputs:
            masked = {**mb, "advantages": mb["advantages"] * (mb["tg_task"] == k)}
            loss = trainer.compute_loss(model, masked)
            for t, g in zip(total, torch.autograd.grad(loss, params), strict=True):
                t += g
        out.append(torch.cat([t.reshape(-1) for t in total]))
    return torch.stack(out)


def task_alone_gradients(trainer, model) -> torch.Tensor:
    """The gradient of TRL's own loss on each task's rows alone (one micro-batch, no
    accumulation, the task's own token count): g_k, [K, P] (full scope)."""
    params = [p for _, p in trainer.tg.groups.params]
    gen, out = trainer.tg_generation, []
    spg, ga = trainer.args.steps_per_generation, trainer.current_gradient_accumulation_steps
    trainer.args.steps_per_generation = trainer.current_gradient_accumulation_steps = 1
    try:
        for k in range(len(TASKS)):
            mbs = [mb for mb, m in zip(trainer._buffered_inputs, gen.micro_groups, strict=True)
                   if m // 2 == k]  # fmt: skip
            alone = {key: torch.cat([mb[key] for mb in mbs]) for key in mbs[0]
                     if torch.is_tensor(mbs[0][key]) and mbs[0][key].ndim > 0}  # fmt: skip
            alone["num_items_in_batch"] = alone["completion_mask"].sum()
            loss = trainer.compute_loss(model, alone)
            out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    finally:
        trainer.args.steps_per_generation, trainer.current_gradient_accumulation_steps = spg, ga
    return torch.stack(out)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_task_gradients_equal_the_masking_route(model_dir, tmp_path, loss_type):
    """G_k = G_kA + G_kB against plain TRL's micro-batches with other tasks' advantages zeroed:
    an independent check of which rows each group holds."""

    class PlainMasking(Plain):
        at_clip = masked_task_gradients

    args = grpo_args(tmp_path, loss_type, steps=1)
    plain, _ = train(PlainMasking, model_dir, args)
    ours, _ = train(Ours, model_dir, args)
    assert same_batches(plain, ours)
    ours_k = ours.rec.buffers[0].view(len(TASKS), 2, -1).sum(1)  # [K, P]
    masked = plain.rec.extra[0]
    for k, task in enumerate(TASKS):
        rel = float((ours_k[k] - masked[k]).norm() / masked[k].norm())
        print(f"{loss_type} {task}: G_k vs masking route, rel L2 {rel:.2e}")
        assert rel < GRAD_REL_TOL


@pytest.mark.parametrize("loss_type", EXACT_LOSS_TYPES)
def test_shares_make_g_k_the_gradient_of_the_task_alone(model_dir, tmp_path, loss_type):
    """g_k = G_k / s_k equals the gradient of TRL's loss on task k's rows alone (LOSS_TYPES)."""

    class OursAlone(Ours):
        at_clip = task_alone_gradients

    ours, _ = train(OursAlone, model_dir, grpo_args(tmp_path, loss_type, steps=1))
    contributions = ours.rec.buffers[0].view(len(TASKS), 2, -1).sum(1)  # [K, P] G_k
    task_shares = ours.rec.shares[0].sum(1)  # [K] s_k
    alone = ours.rec.extra[0]
    for k in range(len(TASKS)):
        g_k = contributions[k] / task_shares[k].float()
        rel = float((g_k - alone[k]).norm() / alone[k].norm())
        print(f"{loss_type} {TASKS[k]}: G_k / s_k vs the task's rows alone, rel L2 {rel:.2e}")
        assert rel < GRAD_REL_TOL, (loss_type, TASKS[k], rel)


# --- balancing ---------------------------------------------------------------------------------


def test_a_strategy_reweights_trls_step_as_taskgrads_loop_does(model_dir, tmp_path):
    weights = [2.0, 1.0, 0.5]
    args = grpo_args(tmp_path, "dapo", steps=2)
    ours, p_static = train(Ours, model_dir, args, strategy="static",
                           strategy_options={"weights": weights})  # fmt: skip
    for step in range(2):  # .grad that Trainer clipped = sum_k w_k G_k
        contributions = ours.rec.buffers[step].view(len(TASKS), 2, -1).sum(1)  # [K, P]
        expected = as_dict(ours, torch.tensor(weights) @ contributions)
        assert rel_l2(ours.rec.grads[step], expected) < 1e-6
    records = RunDir(tmp_path / "taskgrad").records()
    assert [records[0][M.balance_key(t, "weight")] for t in TASKS] == weights
    _, p_uniform = train(Ours, model_dir, grpo_args(tmp_path / "u", "dapo", steps=2))
    assert max_abs(p_static, p_uniform) > 1e-4  # the strategy changed the update


def test_a_gram_strategy_gets_the_loops_inputs(model_dir, tmp_path):
    """equal_norm at step 1: the weights applied (and logged) are those taskgrad's own loop
    computes from the same group Gram and shares (a fresh strategy, the same inputs)."""
    ours, _ = train(Ours, model_dir, grpo_args(tmp_path, "dapo", steps=1), strategy="equal_norm")
    buffer, shares = ours.rec.buffers[0], ours.rec.shares[0]
    gram = (buffer @ buffer.T).double()
    fresh = STRATEGIES.get("equal_norm")(len(TASKS))
    expected = fresh(TaskGradStats(list(TASKS), 1, gram, shares)).task_weights
    record = RunDir(tmp_path / "taskgrad").records()[0]
    logged = torch.tensor([record[M.balance_key(t, "weight")] for t in TASKS], dtype=torch.float64)
    assert torch.allclose(logged, expected, rtol=1e-6)
    assert not torch.allclose(logged, torch.ones_like(logged))
    contributions = buffer.view(len(TASKS), 2, -1).sum(1)
    applied = as_dict(ours, logged.float() @ contributions)
    assert rel_l2(ours.rec.grads[0], applied) < 1e-6


# --- what a TRL user sees ---------------------------------------------------------------------


def test_the_run_directory_opens_in_taskgrad_report(model_dir, tmp_path):
    from taskgrad.cli import main

    ours, _ = train(Ours, model_dir, grpo_args(tmp_path, "dapo", steps=3))
    run_dir = tmp_path / "taskgrad"
    for name in ("config.yaml", "versions.json", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).exists(), name
    cfg = validate(RunDir.load_config(run_dir))  # a valid taskgrad config describing the run
    assert [t.name for t in cfg.tasks] == list(TASKS) and cfg.rollout.group_size == G
    assert cfg.grpo.loss_agg == "token_mean" and cfg.grpo.reward_std == "sample"
    assert cfg.steps == 3 and cfg.balance.strategy == "uniform" and cfg.preset == "trl-dapo"
    assert json.loads((run_dir / "versions.json").read_text())["trl"].startswith("1.16")
    records = RunDir(run_dir).records()
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        for key in record:
            M.parse(key, TASKS)  # SchemaError if a key is not in the schema
    for t in TASKS:
        assert records[0][M.grad_key("full", t, "sqnorm_naive")] > 0
        assert records[0][M.task_key(t, "prompts")] == 2
        assert math.isfinite(records[0][M.task_key(t, "entropy")])
    logged = [h for h in ours.state.log_history if "grad_norm" in h]
    for record, trl_log in zip(records, logged, strict=True):  # TRL's log carries them too
        assert record[M.train_key("grad_norm")] == pytest.approx(trl_log["grad_norm"])
        key = M.task_key("digit", "reward")
        assert record[key] == pytest.approx(trl_log[key])
    assert main(["report", str(run_dir)]) == 0
    assert "digit" in (run_dir / "report.md").read_text()
    # taskgrad's own loop cannot train it (its tasks live in the TRL script): one line, rc 2
    assert main(["train", "--config", str(run_dir / "config.yaml")]) == 2


def test_unmeasured_steps_keep_trls_update_and_log_task_statistics(model_dir, tmp_path):
    args = grpo_args(tmp_path, "dapo", steps=3)
    _, p_plain = train(Plain, model_dir, args)
    _, p_ours = train(Ours, model_dir, args, diagnostics_every=2)
    assert max_abs(p_ours, p_plain) < PARAM_TOL
    records = RunDir(tmp_path / "taskgrad").records()
    measured = [M.grad_key("full", "digit", "sqnorm_unbiased") in r for r in records]
    assert measured == [True, False, True]
    assert all(M.task_key("digit", "reward") in r for r in records)


def test_resuming_from_a_trl_checkpoint_continues_the_run_directory(model_dir, tmp_path):
    args = grpo_args(tmp_path, "dapo", steps=2, save_strategy="steps", save_steps=2)
    train(Ours, model_dir, args)
    args = grpo_args(tmp_path, "dapo", steps=4, save_strategy="no")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = Ours(model=model, reward_funcs=reward, args=args, train_dataset=dataset(),
                   processing_class=load_tokenizer(str(model_dir)))  # fmt: skip
    trainer.train(resume_from_checkpoint=True)
    records = RunDir(tmp_path / "taskgrad").records()
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert M.gain_key("digit", "window") not in records[-1]  # gain_window 10 > 4 steps


@pytest.mark.parametrize("strategy", ["uniform", "equal_norm"])
def test_a_resumed_run_repeats_the_uninterrupted_one(model_dir, tmp_path, strategy):
    """Interrupted after step 2's checkpoint and resumed, a run ends with the uninterrupted run's
    parameters: equal_norm's moving averages (and the window statistics) come back from the
    checkpoint, where they used to restart."""
    constant = {"lr_scheduler_type": "constant"}  # the cut run's schedule must not end at 2
    _, p_full = train(Ours, model_dir, grpo_args(tmp_path / "full", steps=4, **constant),
                      strategy=strategy)  # fmt: skip
    cut = tmp_path / "cut"
    train(Ours, model_dir, grpo_args(cut, steps=2, save_strategy="steps", save_steps=2,
          **constant), strategy=strategy)  # fmt: skip
    assert (cut / "checkpoint-2" / STATE_FILE).exists()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    resumed = Ours(model=model, reward_funcs=reward, args=grpo_args(cut, steps=4, **constant),
                   train_dataset=dataset(), processing_class=load_tokenizer(str(model_dir)),
                   strategy=strategy)  # fmt: skip
    resumed.train(resume_from_checkpoint=True)
    p_resumed = {n: p.detach().clone() for n, p in resumed.model.named_parameters()}
    assert max_abs(p_resumed, p_full) < PARAM_TOL


# --- settings that cannot be decomposed exactly ------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"top_entropy_quantile": 0.5}, "top_entropy_quantile"),
        ({"entropy_coef": 0.01}, "entropy_coef"),
        ({"loss_type": "bnpo", "beta": 0.1}, "beta=0.1"),
        ({"steps_per_generation": 3, "gradient_accumulation_steps": 6}, "steps_per_generation=3"),
        ({"remove_unused_columns": True}, "remove_unused_columns"),
        (
            {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 8},
            "per_device_train_batch_size=3",
        ),
    ],
)
def test_unsupported_settings_stop_with_one_line(model_dir, tmp_path, kwargs, names):
    args = grpo_args(tmp_path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with pytest.raises(ValueError, match=names) as err:
        TaskGradGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset(),
                            processing_class=load_tokenizer(str(model_dir)))  # fmt: skip
    assert "\n" not in str(err.value)


def test_deepspeed_and_several_processes_are_refused():
    base = dict(
        is_deepspeed_enabled=False, is_fsdp_enabled=False, loss_type="dapo", beta=0.0,
        _entropy_bonus_enabled=False, top_entropy_quantile=1.0, aux_loss_enabled=False,
        _is_vlm=False, train_dataset=dataset(), accelerator=SimpleNamespace(num_processes=1),
        args=SimpleNamespace(steps_per_generation=6, gradient_accumulation_steps=6,
                             remove_unused_columns=False),
    )  # fmt: skip
    check_supported(SimpleNamespace(**base), "task")
    for change, names in [
        ({"is_deepspeed_enabled": True}, "DeepSpeed"),
        ({"accelerator": SimpleNamespace(num_processes=2)}, "2 processes"),
        ({"loss_type": "gspo"}, "loss_type='gspo'"),
    ]:
        with pytest.raises(UnsupportedSetting, match=names):
            check_supported(SimpleNamespace(**{**base, **change}), "task")


def test_a_sampling_strategy_is_refused(model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = TaskGradGRPOTrainer(
        model=model, reward_funcs=reward, args=grpo_args(tmp_path, steps=1),
        train_dataset=dataset(), processing_class=load_tokenizer(str(model_dir)),
        strategy="grad_proportional",
    )  # fmt: skip
    with pytest.raises(UnsupportedSetting, match="grad_proportional sets the next batch"):
        trainer.train()


def test_a_strategy_that_reads_the_objective_scale_is_refused(model_dir, tmp_path):
    """FAMO reads kappa_k, which the loop derives from its own loss normalisers (batch.py)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with pytest.raises(UnsupportedSetting, match="strategy='famo': it reads objective_scale"):
        TaskGradGRPOTrainer(
            model=model, reward_funcs=reward, args=grpo_args(tmp_path, steps=1),
            train_dataset=dataset(), processing_class=load_tokenizer(str(model_dir)),
            strategy="famo",
        )  # fmt: skip
