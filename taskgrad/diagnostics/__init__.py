"""In-loop measurements, one module per job; each is a function of explicit inputs, never of the
trainer:

- ``gradient``: per-task gradient metrics of a step, from the captured group buffers (norms,
  cosines, shares, per scope) and from AdamW's state (the update in the optimizer's geometry);
- ``gain``: the paper's windowed learning gain, from the history of training rewards;
- ``probe``: evaluations on fixed probe prompts: the paired probe gain, the one-step gain and
  the transfer matrix (which moves the parameters and puts them back).

Metric keys come from taskgrad.metrics.
"""
