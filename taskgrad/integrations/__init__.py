"""Bridges to other training frameworks, each an optional extra.

``taskgrad.integrations.trl``: taskgrad's per-task gradients, diagnostics and balancing inside
TRL's ``GRPOTrainer`` (``pip install 'taskgrad[trl]'``; docs/trl.md). Its TRL-free parts, the
batch layout (``trl_batch``) and the run directory (``trl_run``), import without TRL.
"""
