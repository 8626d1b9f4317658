"""A model card rendered: one self-contained HTML page (figures inlined as base64 PNG, no external
CSS or JS) and Markdown, written side by side into a folder.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

from fracture.report import sections

HTML_FILE = "model_card.html"
MARKDOWN_FILE = "model_card.md"


def render_markdown(card: dict[str, Any], figure_links: dict[str, str] | None = None) -> str:
    """The card as Markdown; figures link to `figure_links[key]` (default: the card's own paths)."""
    links = figure_links if figure_links is not None else card["figures"]
    out: list[str] = []
    for block in sections.blocks(card):
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "ul":
            out += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            head, rows = block[1], block[2]
            out += ["| " + " | ".join(map(_md, head)) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows] + [""]
        elif kind == "img" and block[1] in links:
            out += [f"![{block[2]}]({links[block[1]]})", ""]
    return "\n".join(out)


def _md(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0 1em; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f0f0f0; text-align: left; } td { vertical-align: top; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; } figcaption { font-size: 13px; color: #555; }
.covered { color: #176b2c; } .partly { color: #8a5a00; } .not { color: #a11; }
"""


def render_html(card: dict[str, Any], images: dict[str, bytes]) -> str:
    """The card as one HTML page: inline CSS, figures (`images[key]`: PNG bytes) as data: URIs, nothing external."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">']
    parts += [f"<title>{e(sections.blocks(card)[0][1])}</title><style>{CSS}</style></head><body>"]
    for block in sections.blocks(card):
        kind = block[0]
        if kind in ("h1", "h2", "h3", "p"):
            parts.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head, rows = block[1], block[2]
            cells = "".join(f"<th>{e(str(h))}</th>" for h in head) if any(head) else ""
            parts.append("<table>" + (f"<tr>{cells}</tr>" if cells else ""))
            for row in rows:
                parts.append("<tr>" + "".join(_td(c) for c in row) + "</tr>")
            parts.append("</table>")
        elif kind == "img" and block[1] in images:
            data = base64.b64encode(images[block[1]]).decode("ascii")
            width = {"gradcam": 1000, "optuna_optimization_history": 600}.get(block[1], 480)
            parts.append(
                f'<figure style="max-width:{width}px"><img alt="{e(block[2])}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(block[2])}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def _td(value) -> str:
    text = str(value)
    css = {"covered": "covered", "partly": "partly", "not covered": "not", "small": "partly"}.get(text)
    return f'<td class="{css}">{html.escape(text)}</td>' if css else f"<td>{html.escape(text)}</td>"


def write(card: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write model_card.html (self-contained) and model_card.md (figures linked relative to it) into out_dir.

    Returns:
        [html path, markdown path].
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {k: Path(v) for k, v in card["figures"].items() if Path(v).is_file()}
    html_path, md_path = out_dir / HTML_FILE, out_dir / MARKDOWN_FILE
    html_path.write_text(render_html(card, {k: p.read_bytes() for k, p in figures.items()}), encoding="utf-8")
    links = {k: Path(os.path.relpath(p, out_dir)).as_posix() for k, p in figures.items()}
    md_path.write_text(render_markdown(card, links) + "\n", encoding="utf-8")
    return [html_path, md_path]
