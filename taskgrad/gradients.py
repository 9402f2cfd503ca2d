r"""Per-task gradients from the training step itself, and everything their Gram matrix gives.

**Groups.** A step's sequences are split into M = 2K groups, one per (task k, half h). The halves
split a task's *prompts* into two disjoint random sets (a prompt's G completions share a baseline,
so they always go together), so the two halves are independent estimates of the task's gradient.
Each group is backpropagated in its own micro-batches; after a group finishes, the gradients of
the parameters in scope are moved into row m of a flat buffer ``F [M, P]`` and ``.grad`` is reset.
After the last group, ``.grad = F.sum(0)``: with the loss aggregation's global per-token weights
(grpo.py) this is exactly the full-batch gradient the optimizer would see, at no extra FLOPs.

**Task objective.** The batch loss restricted to task k's rows is s_k times the task's own
objective (the same aggregation applied to task k alone), with s_k = N_k/N for token_mean and
B_k/B for seq_mean and constant. So the task's gradient is g_k = G_k / s_k, where G_k = G_kA + G_kB
is the sum of its group gradients; G_k = s_k g_k = w_k g_k is the task's contribution to the mixed
update g = sum_k G_k. Each half's estimate is g_kh = G_kh / s_kh.

**Estimators** (all entries of the [M, M] Gram matrix Q_mn = <G_m, G_n>):

    unbiased ||E g_k||^2  =  <g_kA, g_kB>                  E<g_A, g_B> = <E g_A, E g_B>
    naive    ||g_k||^2    =  ||g_k||^2                     biased up by tr(Cov g_k) / n_k
    noise                 =  naive - unbiased              (= ||g_kA - g_kB||^2 / 4, equal halves)
    <g_j, g_k>            =  cross-task inner product      unbiased: disjoint prompts
    cos(j, k)             =  <g_j, g_k> / sqrt(u_j u_k)    undefined unless both u > 0
    update share_k        =  <G_k, g> / ||g||^2            sums to 1 over tasks
    imbalance             =  max_k u_k / min_k u_k         over tasks with u_k > 0

The unbiased estimate can be negative when noise dominates; it is logged as is. Token-mean
normalisation divides by a random token count, which makes <g_kA, g_kB> a ratio estimator with
an O(1/n) bias; with fixed normalisers (seq_mean, constant) it is exactly unbiased.

**Noise.** At small batches the split-half estimate is mostly noise at any one step: these are
per-step *estimates*. Sums of unbiased terms stay unbiased, so aggregate over a window of steps
first and take ratios, logs or cosines of the sums (taskgrad.analysis), never the reverse.

**Shards.** Under FSDP2 (distributed.py) parameters and gradients are DTensors sharded over the
ranks, and the buffer holds this rank's shard of every group gradient, [M, P_rank]. Everything
below is then computed on the shard and finished by ``reduce`` (a sum over the ranks): Grams and
dot products are sums over coordinates, so they are exact; ``restore_sum`` combines the shards
locally. In one process (or DDP) ``reduce`` is the identity and nothing changes.

**Adapters.** With LoRA (lora.py) only the adapters are trainable, so the buffers and every
quantity here live in adapter space: norms and cosines of the gradients of the adapter weights.

**Scopes.** Buffers exist only for the parameters in scope (``full``, ``proxy`` = the last attention
block, or a regex). Per-parameter Grams are summed into per-layer, per-module-kind and proxy
scopes, so all of them come from one pass over the buffers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

import torch

from taskgrad.distributed import like, local

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def module_kind(name: str) -> str:
    """attention | mlp | embeddings | norms | other, from a Hugging Face parameter name."""
    leaf = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name  # module holding the tensor
    if "norm" in leaf or leaf.startswith("ln_"):  # before attention: post_attention_layernorm
        return "norms"
    if "self_attn" in name or ".attn." in name or "attention" in name:
        return "attention"
    if ".mlp." in name or "feed_forward" in name:
        return "mlp"
    if "embed" in name or "lm_head" in name or "wte" in name or "wpe" in name:
        return "embeddings"
    return "other"


def layer_index(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def proxy_names(names: Iterable[str]) -> set[str]:
    """The paper's cheap proxy: the parameters of the last transformer block's attention."""
    names = list(names)
    layers = [i for n in names if (i := layer_index(n)) is not None]
    if not layers:
        return set(names)
    last = max(layers)
    return {n for n in names if layer_index(n) == last and module_kind(n) == "attention"}


def scope_names(names: list[str], scope: str) -> list[str]:
    if scope == "full":
        return names
    if scope == "proxy":
        keep = proxy_names(names)
        return [n for n in names if n in keep]
    pattern = re.compile(scope)
    picked = [n for n in names if pattern.search(n)]
    if not picked:
        raise ValueError(f"diagnostics.scope: regex {scope!r} matches no parameter")
    return picked


class GroupGradients:
    """Keeps each group's gradient over the parameters in scope, in one flat buffer [M, P].

    ``reduce`` finishes a Gram or a dot product computed on this rank's shard (FSDP2: a sum over
    the ranks; None: the buffer holds whole vectors).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        scope: str,
        num_groups: int,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        keep = set(scope_names([n for n, _ in named], scope))
        self.params = [(n, p) for n, p in named if n in keep]
        self.names = [n for n, _ in self.params]
        self.reduce = reduce or (lambda t: t)
        sizes = [local(p).numel() for _, p in self.params]
        self.offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
        first = local(self.params[0][1])
        # float32 at least, even for bf16 models: buffers are summed and multiplied.
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        self.buffer = torch.zeros(
            num_groups, self.offsets[-1], device=first.device, dtype=dtype
        )  # [M, P]
        self.present = torch.zeros(num_groups, dtype=torch.bool)

    def reset(self) -> None:
        self.buffer.zero_()
        self.present.zero_()

    def close_group(self, group: int) -> None:
        """Move the in-scope ``.grad`` accumulated since the last close into row ``group``."""
        row = self.buffer[group]
        for (_, p), lo, hi in zip(self.params, self.offsets[:-1], self.offsets[1:], strict=True):
            if p.grad is not None:
                row[lo:hi].add_(local(p.grad).reshape(-1))
                p.grad = None
        self.present[group] = True

    def restore_sum(self, weights: torch.Tensor | None = None) -> None:
        """Set ``.grad`` of in-scope parameters to the (weighted) sum of the group gradients.

        ``weights`` is [M] (one multiplier per group) or [n_params, M] (per parameter, for
        per-module strategies); None is the plain sum, the ordinary full-batch gradient.
        """
        if weights is None:
            total = self.buffer.sum(0)  # [P]
        elif weights.dim() == 1:
            total = weights.to(self.buffer) @ self.buffer  # [P]
        else:
            total = torch.cat([
                weights[i].to(self.buffer) @ self.buffer[:, lo:hi]
                for i, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:], strict=True))
            ])  # fmt: skip
        for (_, p), lo, hi in zip(self.params, self.offsets[:-1], self.offsets[1:], strict=True):
            p.grad = like(p, total[lo:hi])

    def param_grams(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Per-parameter Gram matrices [n_params, M, M] in float64.

        With ``weight`` [P] (e.g. AdamW's preconditioner), the Gram is of ``weight * G_m``.
        """
        out = []
        for lo, hi in zip(self.offsets[:-1], self.offsets[1:], strict=True):
            block = self.buffer[:, lo:hi]  # [M, n]
            if weight is not None:
                block = block * weight[lo:hi]
            out.append((block @ block.T).double())  # [M, M]
        return self.reduce(torch.stack(out))

    def dots(self, vector: torch.Tensor) -> torch.Tensor:
        """<G_m, vector> per group: [M] in float64 (vector is [P], e.g. the applied update)."""
        return self.reduce((self.buffer @ vector).double())

    def expand(self, per_param: torch.Tensor) -> torch.Tensor:
        """A value per in-scope parameter [n_params] repeated over its coordinates: [P]."""
        sizes = torch.tensor(
            [hi - lo for lo, hi in zip(self.offsets[:-1], self.offsets[1:], strict=True)]
        )
        return per_param.to(self.buffer).repeat_interleave(sizes.to(per_param.device))

    def flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors aligned with the scope into one [P] vector."""
        return torch.cat([local(t).reshape(-1).to(self.buffer.dtype) for t in tensors])

    def snapshot(self) -> torch.Tensor:
        """A flat copy of the in-scope parameters, [P] (to measure the applied update)."""
        with torch.no_grad():
            return self.flat([p.detach() for _, p in self.params])

    def clone_params(self) -> list[torch.Tensor]:
        """Copies of the in-scope parameters, to be put back with ``assign``."""
        return [local(p.detach()).clone() for _, p in self.params]

    @torch.no_grad()
    def assign(self, values: list[torch.Tensor], delta: torch.Tensor | None = None) -> None:
        """Set the in-scope parameters to ``values`` (from ``clone_params``), plus ``delta`` [P]."""
        for (_, p), v, lo, hi in zip(
            self.params, values, self.offsets[:-1], self.offsets[1:], strict=True
        ):
            own, v = local(p), local(v)
            own.copy_(v if delta is None else v + delta[lo:hi].view_as(own).to(p.dtype))


def scope_members(names: list[str], breakdown: bool) -> dict[str, list[int]]:
    """Scope name -> indices of parameters (into ``names``) that it sums over."""
    scopes: dict[str, list[int]] = {"full": list(range(len(names)))}
    proxy = proxy_names(names)
    scopes["proxy"] = [i for i, n in enumerate(names) if n in proxy]
    if breakdown:
        for i, n in enumerate(names):
            scopes.setdefault(module_kind(n), []).append(i)
            layer = layer_index(n)
            if layer is not None:
                scopes.setdefault(f"layer{layer:02d}", []).append(i)
    return {k: v for k, v in scopes.items() if v}


def _inv(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, 1.0 / x.clamp(min=1e-300), torch.full_like(x, math.nan))


def task_statistics(
    gram: torch.Tensor,
    shares: torch.Tensor,
    weights: torch.Tensor | None = None,
    applied: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Everything the diagnostics need from one group Gram.

    gram: [2K, 2K] with group m = 2k + h; shares: [K, 2] (s_kh); weights: [K] multipliers a
    balancing strategy applied to each task's contribution (None: ones); or ``applied`` [K, K],
    the Gram <w G_j, w G_k> of the contributions as applied, for weights that differ between
    parameters (per-module strategies: ``applied_gram``). The task gradients' norms and cosines
    never depend on the weights; the update shares are of the applied update. Returns tensors:
    sqnorm_unbiased [K], sqnorm_naive [K], noise [K], inner [K, K] (<g_j, g_k>, unbiased off the
    diagonal), cos [K, K], update_share [K], contribution_sqnorm [K] (||G_k||^2), total_sqnorm [].
    Tasks that are absent, or have one half empty, get NaN where the estimate needs them.
    """
    k = shares.shape[0]
    q = gram.double().view(k, 2, k, 2)  # [K, 2, K, 2]
    s = shares.double()
    a_half = _inv(s)  # [K, 2]
    a_task = _inv(s.sum(1))  # [K]
    contrib = q.sum(dim=(1, 3))  # [K, K]  <G_j, G_k>
    inner = contrib * a_task[:, None] * a_task[None, :]  # [K, K]  <g_j, g_k>
    cross = q[torch.arange(k), 0, torch.arange(k), 1]  # [K]  <G_kA, G_kB>
    unbiased = cross * a_half[:, 0] * a_half[:, 1]  # [K]
    naive = inner.diagonal().clone()
    root = torch.where(unbiased > 0, unbiased.clamp(min=0).sqrt(), torch.nan)
    cos = inner / (root[:, None] * root[None, :])  # [K, K]
    cos.diagonal().copy_(torch.where(unbiased > 0, 1.0, torch.nan))
    if applied is not None:
        contrib = applied.double()
    elif weights is not None:
        w = weights.double()
        contrib = contrib * w[:, None] * w[None, :]  # <w_j G_j, w_k G_k>
    total = contrib.sum()
    share = contrib.sum(1) / total if total > 0 else torch.full((k,), math.nan)
    return {
        "sqnorm_unbiased": unbiased,
        "sqnorm_naive": naive,
        "noise": naive - unbiased,
        "inner": inner,
        "cos": cos,
        "update_share": share.double(),
        "contribution_sqnorm": contrib.diagonal().clone(),
        "total_sqnorm": total,
    }


def applied_gram(param_grams: torch.Tensor, param_weights: torch.Tensor) -> torch.Tensor:
    """<sum_p W_pj G_j[p], sum_p W_pk G_k[p]>: [K, K], from per-parameter group Grams
    [n, 2K, 2K] and per-parameter task multipliers W [n, K] (both halves of a task share one)."""
    n, m, _ = param_grams.shape
    k = m // 2
    t = param_grams.double().view(n, k, 2, k, 2).sum(dim=(2, 4))  # [n, K, K]
    w = param_weights.double()  # [n, K]
    return (t * w[:, :, None] * w[:, None, :]).sum(0)


def imbalance_ratio(sqnorms: torch.Tensor) -> float:
    """Largest over smallest positive unbiased squared norm; NaN with fewer than two."""
    pos = sqnorms[torch.isfinite(sqnorms) & (sqnorms > 0)]
    return float(pos.max() / pos.min()) if pos.numel() >= 2 else math.nan
