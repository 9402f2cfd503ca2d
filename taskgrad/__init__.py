"""taskgrad: multi-task RL post-training of LLMs that measures, explains and corrects gradient
imbalance between tasks.

The public surface is small; heavy modules (torch, transformers) load only when used.
"""

__version__ = "0.1.0"

__all__ = ["Config", "__version__", "load_config", "train"]


def __getattr__(name: str):
    if name in ("Config", "load_config"):
        from taskgrad import config

        return getattr(config, name)
    if name == "train":
        from taskgrad.train import train

        return train
    raise AttributeError(f"module 'taskgrad' has no attribute {name!r}")
