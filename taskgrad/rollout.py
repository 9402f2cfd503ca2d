"""Sampling completions: the batch layout every later phase reads.

A ``Rollout`` holds B prompts x G completions, each prompt's completions adjacent, every sequence
tagged with its task index, its prompt index and its (task, half) group index m = 2 k + h (the
halves split a task's prompts for the split-half estimators; see gradients.py). Token layout per
row: the left-padded prompt, then the completion, padded on the right after the first EOS:

    [pad pad <s> p r o m p t | c o m p l e t i o n </s> pad pad]
     <------- prompt_len ----> <---------- max_new ----------->

``response_mask`` marks the completion's tokens up to and including its EOS. ``generate`` is the
``transformers`` backend; engines/ holds the others (vLLM) behind the same layout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from taskgrad.policy import format_prompts, position_ids_from_mask
from taskgrad.tasks import Sample


@dataclass(frozen=True)
class PromptBatch:
    """The step's prompts: B samples, each with its task index and its half (0/1)."""

    samples: list[Sample]  # [B]
    task_index: list[int]  # [B] index into the run's task list
    half: list[int]  # [B] which half of its task's prompts it belongs to


@dataclass
class Rollout:
    samples: list[Sample]  # [B] prompts
    group_size: int  # G
    task_index: torch.Tensor  # [B*G] index into the run's task list
    prompt_index: torch.Tensor  # [B*G] index into samples
    group_index: torch.Tensor  # [B*G] (task, half) group m = 2 * task + half
    input_ids: torch.Tensor  # [B*G, P+L]
    attention_mask: torch.Tensor  # [B*G, P+L]
    response_mask: torch.Tensor  # [B*G, L] float, 1 on completion tokens incl. EOS
    completions: list[str]  # [B*G] decoded completions (without EOS)
    prompt_len: int  # P
    prompt_tokens: torch.Tensor  # [B*G] real prompt tokens per row
    # [B*G, L] log-prob of each sampled token under the sampling engine (0 off the response mask);
    # set by engines that report it (vLLM), None for transformers.generate.
    rollout_logprobs: torch.Tensor | None = None

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]  # [B*G, L]

    @property
    def position_ids(self) -> torch.Tensor:
        return position_ids_from_mask(self.attention_mask)

    def rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model inputs of a subset of rows (a micro-batch)."""
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "position_ids": self.position_ids[index],
        }


def response_mask_from_ids(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS; a completion without EOS keeps all its tokens."""
    is_eos = completion_ids == eos_id  # [N, L]
    # Tokens strictly after the first EOS: cumulative count of EOS seen before this position > 0.
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return (~after_eos).float()


@torch.no_grad()
def generate(
    model,
    tokenizer,
    samples: list[Sample],
    task_index: list[int],
    *,
    half: list[int] | None = None,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    chat_template: str = "auto",
    max_prompt_tokens: int = 512,
    generation_batch: int = 256,
    greedy: bool = False,
    prompt_ids: list[int] | None = None,
) -> Rollout:
    """Sample ``group_size`` completions for each of ``samples`` (seeded, so reproducible).

    ``half`` [B] places each prompt in a half of its task's prompts (default: all in half 0).
    ``prompt_ids`` [B]: sample each prompt's completions on their own, from a stream seeded by
    (``seed``, its id), so that they do not depend on which other prompts share the call (data
    parallel ranks each sample their shard and get what one process would); None: one stream
    for the whole batch, in chunks of ``generation_batch`` rows.
    """
    texts = format_prompts(tokenizer, [s.prompt for s in samples], chat_template)
    templated = chat_template != "never" and bool(getattr(tokenizer, "chat_template", None))
    enc = tokenizer(
        texts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_prompt_tokens,
        add_special_tokens=not templated,  # a chat template already holds its BOS
    )
    ids = enc["input_ids"].repeat_interleave(group_size, dim=0)  # [B*G, P]
    mask = enc["attention_mask"].repeat_interleave(group_size, dim=0)  # [B*G, P]
    was_training = model.training
    model.eval()
    opts = dict(greedy=greedy, temperature=temperature, top_p=top_p, max_new=max_new_tokens)
    if prompt_ids is None:
        torch.manual_seed(seed)
        chunks = [
            _sample(model, tokenizer, ids[start : start + generation_batch],
                    mask[start : start + generation_batch], **opts)
            for start in range(0, ids.shape[0], generation_batch)
        ]  # fmt: skip
    else:  # each prompt unpadded, alone, with its own seed: independent of the batch
        chunks = []
        for row, m, pid in zip(enc["input_ids"], enc["attention_mask"], prompt_ids, strict=True):
            torch.manual_seed(prompt_seed(seed, pid))
            own = row[m.bool()].unsqueeze(0).repeat(group_size, 1)  # [G, p]
            chunks.append(_sample(model, tokenizer, own, torch.ones_like(own), **opts))
    model.train(was_training)
    completion_ids = torch.cat(chunks)  # [B*G, L]
    response_mask = response_mask_from_ids(completion_ids, tokenizer.eos_token_id)
    completions = [
        tokenizer.decode(row[: int(m.sum())], skip_special_tokens=True)
        for row, m in zip(completion_ids, response_mask, strict=True)
    ]
    n = len(samples)
    tasks = torch.tensor(task_index, dtype=torch.long)  # [B]
    halves = torch.tensor(half, dtype=torch.long) if half is not None else torch.zeros_like(tasks)
    return Rollout(
        samples=samples,
        group_size=group_size,
        task_index=tasks.repeat_interleave(group_size),
        prompt_index=torch.arange(n).repeat_interleave(group_size),
        group_index=(2 * tasks + halves).repeat_interleave(group_size),
        input_ids=torch.cat([ids, completion_ids], dim=1),
        attention_mask=torch.cat([mask, response_mask.long()], dim=1),
        response_mask=response_mask,
        completions=completions,
        prompt_len=ids.shape[1],
        prompt_tokens=mask.sum(dim=1),
    )


def prompt_seed(seed: int, prompt_id: int) -> int:
    """The torch seed of one prompt's completions under per-prompt seeding."""
    digest = hashlib.sha256(f"taskgrad/prompt/{seed}/{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:6], "little")


def _sample(model, tokenizer, ids, mask, *, greedy, temperature, top_p, max_new) -> torch.Tensor:
    """``model.generate`` on one chunk: the new tokens, right-padded to ``max_new`` [n, L]."""
    device = next(model.parameters()).device
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        do_sample=not greedy,
        temperature=temperature if not greedy else None,
        top_p=top_p if not greedy else None,
        top_k=0 if not greedy else None,
        max_new_tokens=max_new,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    gen = out[:, ids.shape[1] :].cpu()
    if gen.shape[1] < max_new:  # every row stopped early
        fill = torch.full((gen.shape[0], max_new - gen.shape[1]), tokenizer.pad_token_id)
        gen = torch.cat([gen, fill], dim=1)
    return gen
