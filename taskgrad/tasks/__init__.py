"""Tasks: one file each in this package, registered in ``TASKS`` where it is defined (the
registry imports the package's modules on first lookup, so a new task is one new file).

Procedural tasks for the tiny default policy (prompts <= ~30 printable ASCII characters, short
answers) that also work with instruct LLMs (lenient answer extraction, see ``answers``):

* ``arithmetic`` ("3+7*2=" -> "17"), ``linear_eq`` ("3x+4=19;x=" -> "5"), ``multistep``
  ("(3+4)*(9-5)-6=" -> "22"): the easy / medium / hard math mixture;
* ``code`` ("f(x): mul 3 add 1; f(2)=7:" -> "x*3+1", hidden tests in a sandbox), ``countdown``
  ("make 13 from 3 5 2:" -> "3*5-2"), ``table_qa`` ("a=3 b=7 c=5; a+c?" -> "8") and
  ``arithmetic``: the heterogeneous mixture;
* ``dataset``: rows of a JSONL / Parquet file or a Hugging Face dataset, with a math,
  numeric, exact or code reward.

Support modules: ``base`` (Task, Sample, Reward, the registry), ``answers`` (extraction and
checks), ``expressions`` (safe arithmetic), ``sandbox`` / ``sandbox_runner`` (running code).
"""

from taskgrad.tasks.base import TASKS, Reward, Sample, Task, build_tasks

__all__ = ["TASKS", "Reward", "Sample", "Task", "build_tasks"]
