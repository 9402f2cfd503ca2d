"""Plug-ins are one file: a task and a strategy written in a throw-away package outside taskgrad,
named by import path in the config, validated like the config, and trained with."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from taskgrad.balancing import STRATEGIES
from taskgrad.config import ConfigError, load_config
from taskgrad.tasks import TASKS
from taskgrad.train import train
from tests.test_train import SMALL

TASK_FILE = '''
from dataclasses import dataclass

from taskgrad.schema import need
from taskgrad.tasks import Reward, Sample, Task


class EvenFirst(Task):
    """Reward 1 when the first character's code is even (about half of all completions)."""

    name = "even_first"

    @dataclass
    class Options:
        digits: int = 2  # prompt length

        def check(self, where, **_):
            need(self.digits >= 1, f"{where}.digits", f">= 1, got {self.digits}")

    def generate(self, rng):
        digits = "".join(rng.choice("0123456789") for _ in range(self.options.digits))
        return Sample(self.name, digits + "?", "0")

    def reward(self, sample, completion):
        return Reward(float(bool(completion) and ord(completion[0]) % 2 == 0))
'''

STRATEGY_FILE = '''
from dataclasses import dataclass

import torch

from taskgrad.balancing import Balance, Strategy


class FirstOnly(Strategy):
    """Keep only the first task's contribution, scaled by ``scale``."""

    name = "first_only"
    reads = frozenset()

    @dataclass
    class Options:
        scale: float = 1.0

    def __call__(self, s):
        w = torch.zeros(s.num_tasks, dtype=torch.float64)
        w[0] = self.options.scale
        return Balance(w, info={"scale": self.options.scale})
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    package = tmp_path / "myplugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(textwrap.dedent(TASK_FILE))
    (package / "strategies.py").write_text(textwrap.dedent(STRATEGY_FILE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "myplugins.tasks:EvenFirst", "myplugins.strategies:FirstOnly"
    for name in [m for m in sys.modules if m.startswith("myplugins")]:
        del sys.modules[name]


def test_out_of_tree_plugins_by_import_path(plugins):
    task, strategy = plugins
    assert TASKS.get(task).__name__ == "EvenFirst" and strategy in STRATEGIES
    assert "even_first" not in TASKS.names()  # nothing was registered: the path is enough


@pytest.mark.slow
def test_a_new_task_and_strategy_train_with_no_other_change(plugins, tmp_path):
    task, strategy = plugins
    cfg = load_config(None, [
        *SMALL, f"model.cache_dir={tmp_path / 'cache'}", "steps=2",
        f"tasks=[{{name: one, type: '{task}', options: {{digits: 3}}}}, "
        f"{{name: two, type: '{task}'}}]",
        f"balance.strategy='{strategy}'", "balance.options={scale: 2.0}",
    ])  # fmt: skip
    run = train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = records[1]
    assert step["balance/one/weight"] == 2.0 and step["balance/two/weight"] == 0.0
    assert step["balance/info/scale"] == 2.0
    assert step["grad/full/two/update_share"] == 0.0  # measured, but not applied


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tasks=[{name: a, type: 'myplugins.tasks:EvenFirst', options: {digits: 0}}]",
         r"tasks\[0\]\.options\.digits: need >= 1, got 0"),
        ("tasks=[{name: a, type: 'myplugins.tasks:EvenFirst', options: {digit: 3}}]",
         r"unknown key 'tasks\[0\]\.options\.digit'; valid: digits"),
        ("tasks=[{name: a, type: 'myplugins.tasks:Nothing'}]",
         r"tasks\[0\]\.type: task 'myplugins\.tasks:Nothing' cannot be loaded"),
        ("tasks=[{name: a, type: 'myplugins.strategies:FirstOnly'}]",
         r"tasks\[0\]\.type: .* is not a subclass of Task"),
        ("balance.options={scale: many}", r"balance\.options\.scale: expected a number"),
        ("tasks=[{name: a, type: countdown, options: {num_numbers: 1}}]",
         r"tasks\[0\]\.options\.num_numbers: need >= 2"),
        ("balance.strategy=nope", r"balance\.strategy: unknown balancing strategy 'nope'; valid:"),
    ],
)  # fmt: skip
def test_bad_plugin_options_are_one_line_errors_naming_the_field(plugins, override, message):
    base = ["balance.strategy='myplugins.strategies:FirstOnly'"]
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [*base, override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_declares_what_it_reads(name):
    cls = STRATEGIES.get(name)
    assert cls.needs_gradients == bool(cls.reads & {"gram", "module_grams"})
    assert isinstance(cls.scale_invariant, bool) and isinstance(cls.order_dependent, bool)
