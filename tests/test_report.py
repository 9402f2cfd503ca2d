"""``taskgrad report`` and ``taskgrad reproduce``: files written, figures labelled, HTML renders."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("statsmodels")

from taskgrad.analysis.report import default_out, figures_for
from taskgrad.cli import main
from tests.synthetic_runs import write_run

CHROMIUM = Path("/usr/bin/chromium")
PNG = b"\x89PNG\r\n\x1a\n"
SMALL = ("eval.every=8", "diagnostics.gain_window=4", "diagnostics.probe_every=8")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    """Two seeds of one configuration, reported through the CLI once for the tests below."""
    root = tmp_path_factory.mktemp("runs")
    runs = [write_run(root / f"s{s}", seed=s, steps=24, overrides=SMALL, null_every=6,
                      transfer_at=(8,)) for s in range(2)]  # fmt: skip
    out = root / "report"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    return out


def test_cli_report_writes_html_and_markdown(report_dir):
    html = (report_dir / "report.html").read_text()
    md = (report_dir / "report.md").read_text()
    pngs = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert len(pngs) >= 10
    for name in pngs:
        assert (report_dir / name).read_bytes().startswith(PNG)
    assert html.count("<img ") == len(pngs)
    assert "## Does gradient size predict learning gain?" in md
    # the gain claims' verdicts, three outcomes
    verdict = r"(holds|contradicted|undetermined)"
    assert re.search(r"\| preset=default \| \(c\) \| .* \| " + verdict + r" \|", md)


def test_html_is_self_contained(report_dir):
    html = (report_dir / "report.html").read_text()
    sources = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for src in sources:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert not re.search(r'(src|href)="(https?:|//|file:)', html)  # nothing fetched from outside
    assert "<link" not in html and "<script" not in html


def test_html_renders_offline_in_headless_chromium(report_dir, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    # A copy with a probe script: after load it records how many images decoded (naturalWidth).
    html = (report_dir / "report.html").read_text()
    probe = (
        "<script>addEventListener('load', () => { const i = [...document.images];"
        " document.body.dataset.total = i.length;"
        " document.body.dataset.decoded = i.filter(x => x.complete && x.naturalWidth > 0).length;"
        " });</script></body>"
    )
    page = tmp_path / "check.html"
    page.write_text(html.replace("</body>", probe))
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body[^>]*>", done.stdout)
    assert body, done.stdout[:500]
    total = re.search(r'data-total="(\d+)"', body.group(0))
    decoded = re.search(r'data-decoded="(\d+)"', body.group(0))
    assert total and decoded and int(total.group(1)) == html.count("<img ") > 0
    assert decoded.group(1) == total.group(1)  # no broken image


def is_colorbar(ax) -> bool:
    return ax.get_label() == "colorbar"


def test_every_figure_has_labels_a_legend_and_a_title(tmp_path):
    """Over several configurations (seeds, loss aggregations, a second mixture), so that every
    figure is built, including the comparison and the loss-aggregation ones."""
    runs = [write_run(tmp_path / f"d{s}", seed=s, steps=16, overrides=SMALL, transfer_at=(4,))
            for s in range(2)]  # fmt: skip
    runs += [write_run(tmp_path / agg, steps=16, overrides=(*SMALL, f"grpo.loss_agg={agg}"))
             for agg in ("seq_mean", "constant")]  # fmt: skip
    runs.append(write_run(tmp_path / "m", steps=16, preset="math3", overrides=SMALL))
    figs = figures_for(runs, n_boot=50)
    names = {f.name for f in figs}
    assert {"fig1-overview", "loss-aggregation", "accuracy-by-config", "transfer"} <= names
    import matplotlib.pyplot as plt

    for f in figs:
        fig = f.figure
        assert fig.get_suptitle(), f.name
        panels = [ax for ax in fig.axes if ax.get_visible() and not is_colorbar(ax)]
        for ax in panels:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), (f.name, ax.get_title())
        has_legend = bool(fig.legends) or any(ax.get_legend() for ax in panels)
        bars = [ax for ax in fig.axes if is_colorbar(ax)]
        assert has_legend or (bars and all(b.get_ylabel() for b in bars)), f.name
        assert f.caption
        plt.close(fig)


def test_default_out_is_the_run_dir_for_one_run(tmp_path):
    assert default_out([tmp_path / "run"]) == tmp_path / "run"
    assert default_out([tmp_path / "a", tmp_path / "b"]).parent == Path("reports")


def test_cli_report_on_a_missing_run_fails_with_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no config.yaml" in err and "\n" not in err


@pytest.mark.slow
def test_reproduce_smoke(tmp_path, capsys):
    """Every mixture, seed and loss aggregation for 3 steps of a very small tiny model."""
    tiny = [
        "steps=3", "eval.every=3", "eval.size=4", "rollout.prompts_per_task=2",
        "rollout.group_size=2", "rollout.max_new_tokens=6", "model.tiny.warmstart_steps=5",
        "model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2",
        "model.tiny.num_kv_heads=1", "model.tiny.intermediate_size=64", "diagnostics.probe_every=0",
        "diagnostics.breakdown=false", f"model.cache_dir={tmp_path / 'cache'}", "progress=false",
    ]  # fmt: skip
    out = tmp_path / "repro"
    args = ["reproduce", "--seeds", "1", "--ablation-seeds", "0", "--out", str(out), *tiny]
    assert main(args) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["default-constant-s0", "default-s0", "default-seq_mean-s0", "math3-s0"]
    md = (out / "report.md").read_text()
    first_table = md.split("\n## ", 2)[1]
    assert first_table.startswith("The paper's claims, checked")
    for key in "abcdef":
        assert f"| ({key}) " in first_table
    assert (out / "report.html").exists()
    # resumable: a second call trains nothing and rewrites the report
    stamp = (out / "runs" / "default-s0" / "summary.json").stat().st_mtime
    shutil.rmtree(out / "figures")
    assert main(args) == 0
    assert (out / "runs" / "default-s0" / "summary.json").stat().st_mtime == stamp
    assert (out / "figures").is_dir()
