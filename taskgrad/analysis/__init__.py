"""Reports built only from run directories: the paper's findings, computed from any run.

``taskgrad report RUN_DIR ...`` and ``taskgrad reproduce`` (cli.py) are the entry points. This
package imports matplotlib, pandas, scipy and statsmodels (the ``report`` extra); nothing outside
it does, so ``import taskgrad`` stays light.

Modules, from data to document:

    runs.py            load run directories; group them by configuration (seeds aggregate)
    stats.py           Spearman, seed bands, bootstrap intervals, smoothing
    gains.py           windows, learning gain, does gradient size rank gain (bootstrap)
    explain.py         |advantage| vs gradient, regressions, the norm decomposition
    measures.py        imbalance, noise, cosines, proxy agreement, transfer, held-out accuracy
    analyse.py         all of the above for one configuration, computed once
    figures*.py        one function per figure; every figure has labels, a legend and a title
    document.py        the report as blocks, written as self-contained HTML and Markdown + PNGs
    report.py          the report's sections, in order
    claims.py          the paper's claims, each with a rule stated in advance, checked
    reproduce.py       run both mixtures, the length experiment and the ablation, then report

Entry points: ``taskgrad.analysis.report.build_report`` and
``taskgrad.analysis.reproduce.reproduce``.
"""
