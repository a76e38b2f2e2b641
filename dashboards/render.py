"""One renderer for every table a report shows: Markdown, LaTeX (booktabs), HTML and rich.

The ablation table, a search's trials table and the analysis tables (effects, contrasts,
claims, shares) differ in what they hold, not in how a table is written. Each turns itself
into a :class:`Grid` of cell texts (the best values marked, a failed line's reason spanning
its value columns) and this module writes the grid; a change to how tables look happens
once, here. CSV is not rendered from a grid: it holds each table's raw numbers, not its
texts, so each table kind writes its own.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from ablate.errors import UserError

Align = Literal["l", "r"]


@dataclass(frozen=True)
class Cell:
    """One cell's text; ``strong`` marks a best value (bold in every format)."""

    text: str
    strong: bool = False
    #: The value an HTML sortable table sorts by (``data-value``); None: sorted by nothing.
    sort: Any = None
    #: Markup that replaces the escaped text: HTML (a link) and rich (a coloured verdict).
    html: str | None = None
    rich: str | None = None


@dataclass(frozen=True)
class GridLine:
    cells: list[Cell]
    #: The HTML row's class (paper, failed, best, pruned ...) and the terminal row's style.
    css: str = ""
    style: str | None = None
    #: Lines quoted from a paper are set in italics.
    italic: bool = False
    #: A line without values: this text spans every column after the first two.
    message: str | None = None
    #: The terminal's shorter form of ``message`` (the notes below hold the full one).
    short_message: str | None = None


@dataclass(frozen=True)
class Grid:
    caption: str
    #: The LaTeX label's tail: ``tab:<label>``.
    label: str
    header: list[str]
    align: list[Align]
    lines: list[GridLine]
    notes: list[str] = field(default_factory=list)
    #: The HTML table's classes, and the columns' sort kinds for a sortable one.
    classes: str = "ablation"
    sort_kinds: list[str] | None = None
    #: Columns that only make sense on screen (run ids): left out of LaTeX.
    screen_only: int = 0


def _bold_md(cell: Cell) -> str:
    text = cell.text.replace("|", "\\|")
    return f"**{text}**" if cell.strong and text else text


def markdown(grid: Grid) -> str:
    """A GitHub-flavoured Markdown table under its caption, notes as a list below it."""
    out = [f"**{grid.caption}**", "", "| " + " | ".join(grid.header) + " |"]
    out.append("|" + "|".join(":---" if a == "l" else "---:" for a in grid.align) + "|")
    for line in grid.lines:
        cells = [_bold_md(c) for c in line.cells]
        if line.italic and cells[0]:
            cells[0] = f"*{cells[0]}*"
        if line.message is not None:
            rest = len(grid.header) - 2
            cells = cells[:2] + [line.message.replace("|", "\\|")] + [""] * (rest - 1)
        out.append("| " + " | ".join(cells) + " |")
    out += [""] + [f"- {note}" for note in grid.notes]
    return "\n".join(out).rstrip() + "\n"


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_SIGNS = {
    "±": r"$\pm$",
    "–": "--",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "✓": r"$\checkmark$",
    "×": r"$\times$",
    "→": r"$\rightarrow$",
    "≈": r"$\approx$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters and the Unicode signs tables use."""
    out = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)
    for sign, command in _LATEX_SIGNS.items():
        out = out.replace(sign, command)
    return out


def latex(grid: Grid) -> str:
    """A booktabs table in a ``table`` float, scaled to the line width, notes below."""
    ncols = len(grid.header) - grid.screen_only
    out = [
        r"% needs \usepackage{booktabs} (and graphicx for \resizebox)",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(grid.caption)}}}",
        rf"\label{{tab:{latex_escape(grid.label)}}}",
        r"\resizebox{\linewidth}{!}{%",
        rf"\begin{{tabular}}{{{''.join(grid.align[:ncols])}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in grid.header[:ncols]) + r" \\",
        r"\midrule",
    ]
    for line in grid.lines:
        cells = [
            rf"\textbf{{{latex_escape(c.text)}}}" if c.strong and c.text else latex_escape(c.text)
            for c in line.cells[:ncols]
        ]
        if line.italic and cells[0]:
            cells[0] = rf"\textit{{{cells[0]}}}"
        if line.message is not None:
            message = latex_escape(line.message)
            cells = cells[:2] + [rf"\multicolumn{{{ncols - 2}}}{{l}}{{{message}}}"]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}}"]
    if grid.notes:
        out.append(r"\par\smallskip\footnotesize")
        out += [latex_escape(note) + r"\par" for note in grid.notes]
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def _td(cell: Cell, kind: str | None) -> str:
    text = cell.html if cell.html is not None else html.escape(cell.text)
    if cell.strong and text:
        text = f"<strong>{text}</strong>"
    if kind is None:
        return f"<td>{text}</td>"
    missing = cell.sort is None or (isinstance(cell.sort, float) and math.isnan(cell.sort))
    value = "" if missing else html.escape(str(cell.sort))
    return f'<td class="{kind}" data-value="{value}">{text}</td>'


def html_table(grid: Grid) -> str:
    """An HTML table with its caption and its notes below, laid out alike for every table
    of a report so the dashboard styles them alike; a sortable one carries each column's
    kind and each cell's value for the dashboard's sorting script."""
    kinds = grid.sort_kinds
    if kinds is None:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in grid.header)
    else:
        head = "".join(
            f'<th data-sort="{kind}" class="{kind}" title="click to sort">{html.escape(h)}</th>'
            for h, kind in zip(grid.header, kinds, strict=True)
        )
    body = []
    for line in grid.lines:
        tds = [_td(c, None if kinds is None else kinds[i]) for i, c in enumerate(line.cells)]
        if line.message is not None:
            span = len(grid.header) - 2
            message = html.escape(line.message)
            tds = tds[:2] + [f'<td colspan="{span}" class="failed">{message}</td>']
        css = f' class="{line.css}"' if line.css else ""
        body.append(f"<tr{css}>{''.join(tds)}</tr>")
    items = "".join(f"<li>{html.escape(n)}</li>" for n in grid.notes)
    return (
        f'<table class="{grid.classes}"><caption>{html.escape(grid.caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        + (f'<ul class="notes">{items}</ul>' if items else "")
        + "\n"
    )


def _rich_cell(cell: Cell) -> str:
    text = cell.rich if cell.rich is not None else escape(cell.text)
    return f"[bold green]{text}[/]" if cell.strong and text else text


def to_rich(grid: Grid) -> RichTable:
    """The grid for the terminal: best values bold green, each line in its style, the
    notes as the caption."""
    out = RichTable(title=escape(grid.caption), title_justify="left", caption_justify="left")
    for head, align in zip(grid.header, grid.align, strict=True):
        out.add_column(escape(head), justify="left" if align == "l" else "right")
    for line in grid.lines:
        cells = [_rich_cell(c) for c in line.cells]
        if line.message is not None:
            message = line.short_message or line.message
            cells = cells[:2] + [escape(message)] + [""] * (len(grid.header) - 3)
        out.add_row(*cells, style=line.style)
    if grid.notes:
        out.caption = escape("\n".join(grid.notes))
    return out


def wide_console(console: Console | None = None) -> Console:
    """The console to print tables on: a pipe or CI log (no width of its own) gets 200
    columns instead of rich's 80, which would squeeze every cell onto several lines."""
    console = console or Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200), file=console.file)
    return console


Renderer = Callable[[Any], str]


def render_as(table: Any, fmt: str, grid: Callable[[Any], Grid], csv: Renderer) -> str:
    """``table`` as text in ``fmt``: Markdown, LaTeX or HTML from its grid, CSV by its own
    writer; an unknown format is a one-line error naming the ones there are."""
    renderers: dict[str, Renderer] = {
        "md": lambda t: markdown(grid(t)),
        "latex": lambda t: latex(grid(t)),
        "csv": csv,
        "html": lambda t: html_table(grid(t)),
    }
    if fmt not in renderers:
        raise UserError(f"unknown table format '{fmt}': use one of {', '.join(renderers)}")
    return renderers[fmt](table)
