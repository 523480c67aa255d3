"""A small table model and its renderings: Markdown, CSV, LaTeX (booktabs) and HTML.

Cells are plain values (str, int, float, None), `StatCell` (mean ± std (n) over seeds, with a
significance mark) or `ReportedCell` (a number from a paper, † when it comes from a secondary source).
CSV expands them into machine-readable columns (mean, std, n, p; value, source) instead of text.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("md", "csv", "tex", "html")
SUFFIX = {"md": ".md", "csv": ".csv", "tex": ".tex", "html": ".html"}
MISSING = "–"
SECONDARY_MARK = "†"


@dataclass(frozen=True)
class StatCell:
    mean: float
    std: float
    n: int
    digits: int
    p: float | None = None
    mark: str = ""

    def text(self) -> str:
        spread = f" ± {self.std:.{self.digits}f}" if self.n > 1 else ""
        return f"{self.mean:.{self.digits}f}{spread} (n={self.n}){self.mark}"


@dataclass(frozen=True)
class ReportedCell:
    value: float
    digits: int
    source: str
    secondary: bool

    def text(self) -> str:
        return f"{self.value:.{self.digits}f}" + (SECONDARY_MARK if self.secondary else "")


@dataclass(frozen=True)
class Column:
    label: str
    kind: str = "value"  # value | stat | reported
    digits: int | None = None  # for float values


@dataclass
class Table:
    name: str  # file stem
    title: str
    columns: list[Column]
    rows: list[list[Any]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)


def cell_text(value: Any, column: Column) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, StatCell | ReportedCell):
        return value.text()
    if isinstance(value, float) and column.digits is not None:
        return f"{value:.{column.digits}f}"
    return str(value)


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.10g}" if isinstance(value, float) else str(value)


def _csv_fields(value: Any, column: Column) -> list[tuple[str, str]]:
    label = column.label
    if column.kind == "stat":
        stat = value if isinstance(value, StatCell) else None
        return [
            (label, _number(stat.mean if stat else None)),
            (f"{label} std", _number(stat.std if stat else None)),
            (f"{label} n", _number(stat.n if stat else None)),
            (f"{label} p", _number(stat.p if stat else None)),
        ]
    if column.kind == "reported":
        rep = value if isinstance(value, ReportedCell) else None
        source = f"{rep.source}{' (secondary)' if rep.secondary else ''}" if rep else ""
        return [(label, _number(rep.value if rep else None)), (f"{label} source", source)]
    if isinstance(value, str):
        return [(label, "" if value == MISSING else value)]
    return [(label, _number(value))]


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = [name for column in table.columns for name, _ in _csv_fields(None, column)]
    writer.writerow(header)
    for row in table.rows:
        writer.writerow(
            [
                text
                for value, column in zip(row, table.columns, strict=True)
                for _, text in _csv_fields(value, column)
            ]
        )
    return out.getvalue()


def to_markdown(table: Table) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|").replace("*", "\\*")

    lines = [f"### {table.title}", ""]
    if table.caption:
        lines += [table.caption, ""]
    lines.append("| " + " | ".join(escape(c.label) for c in table.columns) + " |")
    lines.append(
        "|"
        + "|".join("---" if c.kind == "value" and c.digits is None else "---:" for c in table.columns)
        + "|"
    )
    for row in table.rows:
        lines.append(
            "| " + " | ".join(escape(cell_text(v, c)) for v, c in zip(row, table.columns, strict=True)) + " |"
        )
    if table.notes:
        lines += [""] + [f"- {escape(note)}" for note in table.notes]
    return "\n".join(lines) + "\n"


_TEX_REPLACEMENTS = {
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
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "σ": r"$\sigma$",
    "λ": r"$\lambda$",
    "β": r"$\beta$",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "–": "--",
    "—": "---",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX_REPLACEMENTS.get(char, char) for char in text)


def to_latex(table: Table) -> str:
    align = "".join("l" if c.kind == "value" and c.digits is None else "r" for c in table.columns)
    caption = tex_escape(table.title + (f". {table.caption}" if table.caption else ""))
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{tab:{table.name}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(tex_escape(c.label) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    lines += [
        " & ".join(tex_escape(cell_text(v, c)) for v, c in zip(row, table.columns, strict=True)) + r" \\"
        for row in table.rows
    ]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines.append(r"\par\footnotesize " + r" \\ ".join(tex_escape(note) for note in table.notes))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_html(table: Table) -> str:
    """An HTML fragment (a <section> with the table); the report wraps it in a page."""
    esc = html.escape
    head = "".join(f"<th>{esc(c.label)}</th>" for c in table.columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{esc(cell_text(v, c))}</td>" for v, c in zip(row, table.columns, strict=True))
        + "</tr>"
        for row in table.rows
    )
    notes = "".join(f"<li>{esc(note)}</li>" for note in table.notes)
    return (
        f'<section class="table" id="{esc(table.name)}">\n<h3>{esc(table.title)}</h3>\n'
        + (f"<p>{esc(table.caption)}</p>\n" if table.caption else "")
        + f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>\n"
        + (f'<ul class="notes">{notes}</ul>\n' if notes else "")
        + "</section>\n"
    )


RENDERERS: dict[str, Callable[[Table], str]] = {
    "md": to_markdown,
    "csv": to_csv,
    "tex": to_latex,
    "html": to_html,
}


def render(table: Table, fmt: str) -> str:
    return RENDERERS[fmt](table)
