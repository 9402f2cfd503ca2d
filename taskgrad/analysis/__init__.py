"""Reports built only from run directories: the paper's findings, computed from any run.

``taskgrad report RUN_DIR ...`` and ``taskgrad reproduce`` (cli.py) are the entry points. This
package imports matplotlib, pandas, scipy and statsmodels (the ``report`` extra); nothing outside
it does, so ``import taskgrad`` stays light.

Modules, from data to document:

    runs.py            load run directories; group them by configuration (seeds aggregate)
    stats.py           seed bands, bootstrap intervals, smoothing (+ taskgrad.stats)
    windows.py         window estimators: imbalance, signal, cosines, shares, proxy agreement,
                       pooled over windows and seeds with block-bootstrap intervals
    verdicts.py        the claims' rules: holds / contradicted / undetermined, margins in advance
    power.py           planted data: each rule's operating characteristics at a given size
    explain.py         the window-mean GLM (imbalance explained), the norm decomposition
    measures.py        transfer matrices (with their noise floor), held-out accuracy
    analyse.py         all of the above for one configuration, computed once
    figures*.py        one function per figure; every figure has labels, a legend and a title
    document.py        the report as blocks, written as self-contained HTML and Markdown + PNGs
    report.py          the report's sections, in order
    claims.py          the paper's claims, each with a rule stated in advance, checked
    reproduce.py       run both mixtures, the length experiment and the ablation, then report

Entry points: ``taskgrad.analysis.report.build_report`` and
``taskgrad.analysis.reproduce.reproduce``.
"""
