r"""Data parallelism: N processes train one policy on one global batch, and every per-task
gradient quantity is the one a single process computes on that batch.

Launch: ``taskgrad train --nproc N ...`` (``torch.distributed.run`` underneath), or for several
nodes ``torchrun --nnodes ... -m taskgrad.cli train ...`` / ``accelerate launch -m taskgrad.cli
train ...`` (docs/scale.md). ``accelerate`` makes the process group and places the model;
``parallel.mode`` picks how parameters live: ``ddp`` (replicated, accelerate's DDP wrapper) or
``fsdp2`` (sharded by ``torch.distributed.fsdp.fully_shard`` per decoder layer and at the root,
applied here: accelerate ignores its FSDP plugin on CPU, and one code path is then tested on CPU
and run on GPU). DeepSpeed ZeRO is refused: it reduces and partitions gradients inside its own
hooks, where the per-group capture cannot reach them; fsdp2 shards like ZeRO-3.

**The batch is global, the work is sharded.** Every rank draws the same global prompt list
(seeded by step) and keeps the prompts i with i mod N = rank: a prompt's G completions stay on
one rank, and the halves, assigned per prompt before sharding, never depend on the rank. Each
rank samples its shard with per-prompt seeds (``rollout.seeding=prompt``; vLLM always), so it
draws the tokens one process with per-prompt seeding draws, and scores it. One all-gather of
the shards (token ids, masks, rewards, verifier values: rows x length integers, nothing of model
size) gives every rank the global ``Rollout``, on which ``make_batch`` computes advantages, the
token weights c_it and the shares s_kh of the whole batch: the per-rank losses add up to the
single-process loss, and every statistic is of the global batch.

**The same groups in the same order on every rank.** The backward runs groups m = 0..2K-1 in
micro-batches; every rank runs as many micro-batches of group m as the rank with most rows of it
needs, and a rank out of rows runs a zero loss through the model (an exact zero gradient), so the
collectives inside forward and backward (FSDP2's all-gathers and reduce-scatters, DDP's buffer
broadcast) line up.

**Exact group gradients.**

* ddp: backward under ``no_sync``; row m of a rank's buffer holds its rows' part of G_m, and one
  all-reduce of the [M, P] buffer (with the out-of-scope gradients) after the last group gives
  every rank the global G_m: the Gram, the strategy and the update are then the single-process
  ones, computed redundantly on every rank.
* fsdp2: every micro-batch's backward reduce-scatters as usual, summing (divide factor 1); each
  rank keeps its shard of every group gradient ([M, P/N]); ``GroupGradients`` forms the
  per-parameter Grams of its shard and one all-reduce of those [n_params, M, M] float64 matrices
  gives the global Grams (inner products of sharded vectors are sums of per-shard ones). Strategy
  weights combine the shards locally (no collective); dot products with the applied step ([M]
  or [K]) and the AdamW-geometry Grams are all-reduced the same way.

**Communication of the diagnostics**, per measured step, in elements sent per rank with ring
collectives (P: in-scope parameters, M = 2K groups, N ranks, n_params parameter tensors):

* ddp: the buffer all-reduce, 2 (N-1)/N M P, replaces the one gradient all-reduce of a plain
  DDP step with gradient accumulation, 2 (N-1)/N P: (M - 1) times that much extra.
* fsdp2: one reduce-scatter per micro-batch, (N-1)/N P each (FSDP2's default without
  ``set_requires_gradient_sync``, which keeps memory sharded): nothing extra when there are at
  least M micro-batches anyway, at most M - 1 extra reduce-scatters otherwise; plus the Gram
  all-reduce, 2 (N-1)/N n_params M^2 float64 (Qwen2.5-7B, K = 4: 339 x 64 x 8 B = 174 KB; with
  AdamW geometry twice that).
* both: the rollout all-gather and the all-reduce of per-row sums (entropy, clipping, loss, KL:
  4 B G floats): a few MB at most.

**Evaluation and probes are shared out** like the rollouts (``Parallel.sharded``, after a weight
sync every rank joins): prompt i of a held-out or probe set is sampled on rank i mod N from a
stream seeded by its id, and the per-prompt results are gathered, so every rank holds what one
process with per-prompt seeding computes (with ``rollout.seeding=batch``, which no launch
chooses by default, rank 0 samples them alone and broadcasts them).

**Main process only:** the run directory (other ranks get a ``NullRun``): evaluation outcomes,
metrics and checkpoints are written by rank 0.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from taskgrad.rollout import PromptBatch, Rollout

T = TypeVar("T")


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: the local shard of a DTensor, the tensor itself otherwise."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor gathered from every rank (a collective), else itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def like(param: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (this rank's part, flat or shaped) as a gradient for ``param``."""
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor):
        return values.view_as(param).to(param.dtype)
    shard = values.view_as(param.to_local()).to(param.dtype)
    return DTensor.from_local(
        shard, param.device_mesh, param.placements, run_check=False,
        shape=param.shape, stride=param.stride(),
    )  # fmt: skip


def full_named_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole detached parameter) pairs; under FSDP2 every rank must iterate them all."""
    for name, p in model.named_parameters():
        yield name, full(p.detach())


class RankFailed(Exception):
    """A rank's error, raised on every rank (``Parallel.agree``): no rank goes on to a collective
    that the failed one never reaches. ``error`` is the failed rank's exception (a stand-in
    RuntimeError with its type and message if it cannot be pickled); the CLI prints it once, on
    rank 0."""

    def __init__(self, rank: int, error: BaseException) -> None:
        where = "" if rank == 0 else f"rank {rank}: "
        super().__init__(f"{where}{error}")
        self.rank, self.error = rank, error


def shutdown() -> None:
    """The end of a data-parallel process: every rank waits here for the others, then the process
    group is destroyed. After a finished run, without it the process exits with gloo's worker
    threads alive and the C++ runtime may abort it ("terminate called without an active
    exception", SIGABRT: pytorch/pytorch#190489) after the run was written. After an agreed error
    (``RankFailed``), the wait keeps every rank alive until rank 0 has printed it: the launcher
    stops the other workers when the first one exits, which could otherwise stop rank 0 before it
    speaks (the group is sound: the error was agreed through it). Never after an error only this
    rank has: the others may be inside a collective, and the barrier would hang; the launcher
    stops them. A no-op in one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def leave(code: int) -> None:
    """End a data-parallel process now, with status ``code``, after an error the ranks did not
    agree (an interrupt lands on each rank wherever it is, possibly inside a collective; an error
    of one rank leaves the others inside one): no barrier and no ``destroy_process_group``, either
    of which could wait on a peer, and no interpreter teardown, in which gloo threads still busy
    with a collective can abort the process (``shutdown``), turning the reported status into
    SIGABRT. Output is flushed first; the run directory was closed by the training loop. Returns
    (does nothing) outside a launched worker of several processes."""
    import torch.distributed as dist

    launched = "LOCAL_RANK" in os.environ and dist.is_available() and dist.is_initialized()
    if launched and dist.get_world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (it is sent to the other ranks), else a stand-in."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


@dataclass
class Parallel:
    """Where this process stands in the launch, and the collectives the loop needs (no-ops, and
    no torch.distributed call, in one process)."""

    mode: str = "single"  # single | ddp | fsdp2
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- prompts and rows ----------------------------------------------------------------------

    def owner(self, prompt_index: torch.Tensor) -> torch.Tensor:
        """The rank that holds each row's prompt (prompt i -> rank i mod N)."""
        return prompt_index % self.world

    def shard(self, prompts: PromptBatch) -> tuple[PromptBatch, list[int]]:
        """This rank's prompts of the global batch, and their ids (indices) in it."""
        ids = list(range(self.rank, len(prompts.samples), self.world))
        if not self.active:
            return prompts, ids
        pick = lambda xs: [xs[i] for i in ids]  # noqa: E731
        return PromptBatch(pick(prompts.samples), pick(prompts.task_index), pick(prompts.half)), ids

    # --- collectives ---------------------------------------------------------------------------

    def all_reduce_(self, *tensors: torch.Tensor | None) -> None:
        """Sum each tensor over the ranks, in place (one collective per dtype)."""
        if not self.active:
            return
        import torch.distributed as dist

        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            if t is None or not t.numel():
                continue
            if t.device == self.device and t.is_contiguous() and t.numel() >= 1 << 20:
                dist.all_reduce(t)  # large (the group buffer): in place, no copy
            else:
                by_dtype.setdefault(t.dtype, []).append(t)
        for ts in by_dtype.values():
            flat = torch.cat([t.reshape(-1).to(self.device) for t in ts])
            dist.all_reduce(flat)
            offset = 0
            for t in ts:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def summed(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (a new tensor; ``t`` itself in one process)."""
        if not self.active:
            return t
        out = t.clone()
        self.all_reduce_(out)
        return out

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (pickled: small objects only)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sharded(
        self, fn: Callable[[int, int], dict[str, list[Any]]], split: bool = True
    ) -> dict[str, list[Any]]:
        """Work on lists of prompts, shared out: ``fn(rank, world)`` gives, per key, the values of
        items ``rank``, ``rank + world``, ... of each list; every rank gets the whole lists, in
        item order (one all-gather). ``split`` False: rank 0 does all of it, ``fn(0, 1)``, and
        broadcasts it (work whose results depend on how it is split). Errors are agreed; every
        rank must call it."""
        if not split:
            return self.on_main(lambda: fn(0, 1))
        shards = self.gather(self.agree(lambda: fn(self.rank, self.world)))
        whole: dict[str, list[Any]] = {}
        for key in shards[0]:
            merged: list[Any] = [None] * sum(len(shard[key]) for shard in shards)
            for r, shard in enumerate(shards):
                merged[r :: self.world] = shard[key]
            whole[key] = merged
        return whole

    def first(self, obj: T | None) -> T | None:
        """The first rank's non-None ``obj`` on every rank (None when every rank has None): a
        fault one rank finds in its shard stops every rank."""
        return next((o for o in self.gather(obj) if o is not None), None)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 only, its result broadcast to every rank; its error raised on
        every rank (``agree``)."""
        return self.broadcast(self.agree(lambda: fn() if self.is_main else None))

    def agree(self, fn: Callable[[], T]) -> T:
        """``fn()`` on this rank; if it failed on any rank, ``RankFailed`` (the first failed
        rank's error) on every rank, before any rank reaches the next collective; in one process,
        ``fn()`` plainly. Every rank must call it (it is a collective)."""
        if not self.active:
            return fn()
        result, error = None, None
        try:
            result = fn()
        except Exception as e:
            error = e
        failed = self.first(None if error is None else (self.rank, _portable(error)))
        if failed is None:
            return result  # type: ignore[return-value]
        rank, first_error = failed
        if rank == self.rank:
            raise RankFailed(rank, error) from error  # type: ignore[arg-type]
        raise RankFailed(rank, first_error)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    # --- the step --------------------------------------------------------------------------------

    def no_sync(self, accelerator: Any, model: torch.nn.Module):
        """DDP's gradient all-reduce off for the whole backward phase (``reduce_gradients`` then
        sums once); nothing to turn off otherwise."""
        return accelerator.no_sync(model) if self.mode == "ddp" and self.active else nullcontext()

    def reduce_gradients(self, model: torch.nn.Module, buffer: torch.Tensor | None) -> None:
        """After the backward phase under DDP: sum the group buffer [M, P] and every gradient
        left in ``.grad`` (out of scope, or all of them on an unmeasured step) over the ranks."""
        if self.mode != "ddp" or not self.active:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.all_reduce_(buffer, *grads)

    def gram_reduce(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """How ``GroupGradients`` finishes a Gram or dot product of its (sharded) rows."""
        return self.summed if self.mode == "fsdp2" and self.active else None

    def gather_rollout(
        self, prompts: PromptBatch, rollout: Rollout, ids: list[int], rewards: torch.Tensor,
        row_metrics: list[dict[str, float]], pad_id: int,
    ) -> tuple[Rollout, torch.Tensor, list[dict[str, float]]]:  # fmt: skip
        """The global rollout of ``prompts`` from every rank's shard (see the module docstring):
        rows in global prompt order, prompts left-padded to the longest of any shard."""
        if not self.active:
            return rollout, rewards, row_metrics
        payload = {
            "ids": ids, "prompt_len": rollout.prompt_len, "input_ids": rollout.input_ids,
            "attention_mask": rollout.attention_mask, "response_mask": rollout.response_mask,
            "completions": rollout.completions, "prompt_tokens": rollout.prompt_tokens,
            "rollout_logprobs": rollout.rollout_logprobs, "rewards": rewards,
            "row_metrics": row_metrics,
        }  # fmt: skip
        return merge_shards(prompts, self.gather(payload), rollout.group_size, pad_id)

    # --- checkpoints -----------------------------------------------------------------------------

    def optimizer_state(self, model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
        """The optimizer's whole state (FSDP2: gathered to full tensors, on every rank)."""
        if self.mode != "fsdp2" or not self.active:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=False)
        return get_optimizer_state_dict(model, optimizer, options=opts)

    def load_optimizer_state(
        self, model: torch.nn.Module, optimizer: Any, state: dict[str, Any]
    ) -> None:
        if self.mode != "fsdp2" or not self.active:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=opts)

    def savable(self, policy: torch.nn.Module) -> Any:
        """What the run directory saves as the weights: the policy, or under FSDP2 a wrapper
        whose ``save_pretrained`` writes the gathered full state dict (collective: every rank
        calls this; only rank 0 saves)."""
        if self.mode != "fsdp2" or not self.active:
            return policy
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return _FullWeights(policy, get_model_state_dict(policy, options=opts))


@dataclass
class _FullWeights:
    policy: torch.nn.Module
    state_dict: dict[str, torch.Tensor]

    def save_pretrained(self, path: Path) -> None:
        self.policy.save_pretrained(path, state_dict=self.state_dict)

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The gathered tensors (what the non-finite check before a save reads)."""
        return iter(self.state_dict.items())


def merge_shards(
    prompts: PromptBatch, parts: list[dict[str, Any]], group_size: int, pad_id: int
) -> tuple[Rollout, torch.Tensor, list[dict[str, float]]]:
    """The global Rollout, rewards and per-row verifier values from every rank's payload."""
    g, n = group_size, len(prompts.samples)
    width = max(part["prompt_len"] for part in parts)
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for part in parts:
        pad = width - part["prompt_len"]
        for j, pid in enumerate(part["ids"]):
            sl = slice(j * g, (j + 1) * g)
            ids, mask = part["input_ids"][sl], part["attention_mask"][sl]
            rows[pid] = {
                "input_ids": torch.nn.functional.pad(ids, (pad, 0), value=pad_id),
                "attention_mask": torch.nn.functional.pad(mask, (pad, 0), value=0),
                "response_mask": part["response_mask"][sl],
                "completions": part["completions"][sl],
                "prompt_tokens": part["prompt_tokens"][sl],
                "rewards": part["rewards"][sl],
                "row_metrics": part["row_metrics"][sl],
                "rollout_logprobs": None if part["rollout_logprobs"] is None
                else part["rollout_logprobs"][sl],
            }  # fmt: skip
    cat = lambda key: torch.cat([r[key] for r in rows])  # noqa: E731
    tasks = torch.tensor(prompts.task_index, dtype=torch.long)
    halves = torch.tensor(prompts.half, dtype=torch.long)
    engine_logprobs = rows[0]["rollout_logprobs"] is not None if rows else False
    rollout = Rollout(
        samples=prompts.samples, group_size=g, task_index=tasks.repeat_interleave(g),
        prompt_index=torch.arange(n).repeat_interleave(g),
        group_index=(2 * tasks + halves).repeat_interleave(g),
        input_ids=cat("input_ids"), attention_mask=cat("attention_mask"),
        response_mask=cat("response_mask"),
        completions=[c for r in rows for c in r["completions"]], prompt_len=width,
        prompt_tokens=cat("prompt_tokens"),
        rollout_logprobs=cat("rollout_logprobs") if engine_logprobs else None,
    )  # fmt: skip
    return rollout, cat("rewards"), [m for r in rows for m in r["row_metrics"]]


def micro_batch_schedule(
    group_index: torch.Tensor, owner: torch.Tensor, num_groups: int, size: int, rank: int,
    world: int,
) -> Iterator[tuple[int, torch.Tensor, bool]]:  # fmt: skip
    """(group m, this rank's rows, last of the group) for m = 0..M-1: task-pure, half-pure
    micro-batches of at most ``size`` rows, as many per group on every rank (the most any rank
    needs; a rank out of rows gets empty ones). In one process: ``batch.micro_batches``."""
    for m in range(num_groups):
        in_group = group_index == m
        counts = [int((in_group & (owner == r)).sum()) for r in range(world)]
        steps = max(math.ceil(c / size) for c in counts)
        rows = (in_group & (owner == rank)).nonzero().flatten()
        for j in range(steps):
            yield m, rows[j * size : (j + 1) * size], j == steps - 1


class NullRun:
    """The run directory as seen by ranks other than 0: they write nothing."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def guard(self, step: Callable[[], int], steps: int):
        return nullcontext()

    def checkpoints(self, note: Callable[[str], None] | None = None) -> list[Path]:
        from taskgrad.rundir import RunDir

        return RunDir(self.path).checkpoints()

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def apply_fsdp2(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2: each decoder layer (the model's
    ``_no_split_modules`` classes) and the root; gradients are summed, never averaged."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # The per-rank losses already carry the global normalisers: their sum is the loss.
            module.set_gradient_divide_factor(1.0)
    return model
