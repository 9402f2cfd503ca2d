"""One process of a data-parallel equality test (tests/test_distributed.py): ``taskgrad.train``
in this process, recording what the metrics do not hold.

    python -m tests.dp_worker OUT key=value ...                        # one process
    torchrun --standalone --nproc_per_node 2 -m tests.dp_worker OUT key=value ...

Recorded, per update, into ``OUT/records.pt`` by rank 0: the per-parameter group Grams the
strategy saw ([n_params, M, M], after the all-reduce under FSDP2), the per-parameter task
weights it applied ([n_params, K]) and every parameter after the optimizer step, flattened and
gathered whole. The run directory is ``OUT/run``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from taskgrad import train as T
from taskgrad.config import load_config
from taskgrad.distributed import full, shutdown


def main(out: Path, overrides: list[str]) -> None:
    records: dict[str, list[torch.Tensor]] = {"grams": [], "weights": [], "params": []}
    balance, optimizer_step = T.balance, T.optimizer_step

    def recorded_balance(trainer, *args, **kwargs):
        balanced, window = balance(trainer, *args, **kwargs)
        records["grams"].append(balanced.grams.clone())
        records["weights"].append(balanced.param_weights.clone())
        return balanced, window

    def recorded_step(trainer, step=0):
        result = optimizer_step(trainer, step)
        params = [full(p.detach()).reshape(-1).double() for p in trainer.policy.parameters()]
        records["params"].append(torch.cat(params))
        return result

    T.balance, T.optimizer_step = recorded_balance, recorded_step
    T.train(load_config(None, overrides), out / "run")
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(records, out / "records.pt")
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
