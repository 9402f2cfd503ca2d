"""The report as a list of blocks, written twice: one self-contained HTML file (figures inlined
as base64 PNG, no external assets, opens offline) and Markdown with PNG files beside it."""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt

from taskgrad.analysis.figures import Fig

CSS = """
body { font-family: Georgia, 'Times New Roman', serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.8em; font-size: 0.8em; white-space: pre-wrap; }
figcaption { font-size: 0.88em; color: #444; } .note { color: #555; font-size: 0.9em; }
.holds { color: #1a7f37; font-weight: bold; } .fails { color: #b42318; font-weight: bold; }
"""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Document:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def para(self, text: str, note: bool = False) -> None:
        self.blocks.append(("note" if note else "p", text))

    def pre(self, text: str) -> None:
        """Preformatted text (the methods: formulas keep their layout)."""
        self.blocks.append(("pre", text))

    def table(self, header: list[str], rows: list[list[str]], caption: str = "") -> None:
        self.blocks.append(("table", Table(header, rows, caption)))

    def figure(self, fig: Fig | None) -> None:
        if fig is not None:
            self.blocks.append(("figure", fig))

    def figures(self) -> list[Fig]:
        return [b for kind, b in self.blocks if kind == "figure"]

    def write(self, out: Path, dpi: int = 110) -> tuple[Path, Path]:
        """Write report.html and report.md (+ figures/*.png) into ``out``; close the figures."""
        out.mkdir(parents=True, exist_ok=True)
        (out / "figures").mkdir(exist_ok=True)
        for old in (out / "figures").glob("[0-9][0-9]-*.png"):  # a previous report's figures
            old.unlink()
        pngs: dict[int, tuple[str, bytes]] = {}
        for i, fig in enumerate(self.figures(), start=1):
            buf = io.BytesIO()
            fig.figure.savefig(buf, format="png", dpi=dpi)
            plt.close(fig.figure)
            name = f"figures/{i:02d}-{fig.name}.png"
            (out / name).write_bytes(buf.getvalue())
            pngs[id(fig)] = (name, buf.getvalue())
        (out / "report.html").write_text(self.html(pngs))
        (out / "report.md").write_text(self.markdown(pngs))
        return out / "report.html", out / "report.md"

    def html(self, pngs: dict[int, tuple[str, bytes]]) -> str:
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        n = 0
        for kind, block in self.blocks:
            if kind == "h2":
                parts.append(f"<h2>{html.escape(str(block))}</h2>")
            elif kind in ("p", "note"):
                cls = ' class="note"' if kind == "note" else ""
                parts.append(f"<p{cls}>{_inline_html(str(block))}</p>")
            elif kind == "pre":
                parts.append(f"<pre>{html.escape(str(block))}</pre>")
            elif kind == "table":
                parts.append(_html_table(block))
            else:
                n += 1
                data = base64.b64encode(pngs[id(block)][1]).decode()
                parts.append(
                    f'<figure><img alt="Figure {n}: {html.escape(block.name)}" '
                    f'src="data:image/png;base64,{data}"><figcaption><b>Figure {n}.</b> '
                    f"{html.escape(block.caption)}</figcaption></figure>"
                )
        body = "\n".join(parts)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n"
        )

    def markdown(self, pngs: dict[int, tuple[str, bytes]]) -> str:
        parts = [f"# {self.title}"]
        n = 0
        for kind, block in self.blocks:
            if kind == "h2":
                parts.append(f"## {block}")
            elif kind in ("p", "note"):
                parts.append(f"*{block}*" if kind == "note" else str(block))
            elif kind == "pre":
                parts.append(f"```text\n{block}\n```")
            elif kind == "table":
                parts.append(_md_table(block))
            else:
                n += 1
                parts.append(
                    f"![Figure {n}: {block.name}]({pngs[id(block)][0]})\n\n"
                    f"**Figure {n}.** {block.caption}"
                )
        return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    """Escape, then render **bold** as in the Markdown version."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def _cell_html(text: str) -> str:
    cls = {"holds": "holds", "does not hold": "fails"}.get(text)
    return (
        f'<td class="{cls}">{html.escape(text)}</td>' if cls else f"<td>{_inline_html(text)}</td>"
    )


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    rows = "".join("<tr>" + "".join(_cell_html(c) for c in r) + "</tr>" for r in t.rows)
    cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _md_table(t: Table) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in t.rows]
    return (f"*{t.caption}*\n\n" if t.caption else "") + "\n".join(lines)
