"""Output formats of `realfake predict`, written batch by batch as the results come (nothing is held back for the
end, so memory does not grow with the number of files): an aligned table, JSON, or CSV.

The table is for people: characters that do not print in a file name (a newline, a tab, an escape sequence) are
written as \\n, \\t, \\x1b so that one image is always one line. Its columns are as wide as the first batch needs;
a longer path further down pushes its own line's columns to the right. JSON and CSV quote what needs quoting themselves.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import textwrap
from collections.abc import Sequence
from typing import TextIO

from realfake.serving.classify import Prediction

COLUMNS = ("path", "p_fake", "label", "model", "resampled", "ood", "ood_score")
TABLE_HEADER = ("path", "P(fake)", "label", "model", "resampled", "out of distribution")


def escape_control(text: str) -> str:
    """`text` with control characters (a newline in a file name) written as escapes, so a row stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


printable = escape_control


def _flag(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")


def _ood_words(p: Prediction) -> str:
    return {None: "", True: "yes: verdict unreliable", False: "no"}[p.ood]


def table_row(p: Prediction) -> tuple[str, ...]:
    return (escape_control(p.path), f"{p.p_fake:.4f}", p.label, p.model, _flag(p.resampled), _ood_words(p))


def as_dict(p: Prediction) -> dict:
    return dataclasses.asdict(p)


class TableWriter:
    def __init__(self, out: TextIO):
        self.out, self.widths = out, None

    def write(self, predictions: Sequence[Prediction]) -> None:
        if not predictions:
            return
        rows = [table_row(p) for p in predictions]
        if self.widths is None:
            self.widths = [max(len(row[i]) for row in [TABLE_HEADER, *rows]) for i in range(len(TABLE_HEADER))]
            rows.insert(0, TABLE_HEADER)
        lines = (
            "  ".join(cell.rjust(w) if i == 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, self.widths,
                                                                                                 strict=True)))
            for row in rows
        )  # fmt: skip
        self.out.write("".join(line.rstrip() + "\n" for line in lines))

    def close(self) -> None:
        pass


class JsonWriter:
    """A JSON list of {path, p_fake, label, model, resampled, ood, ood_score} objects (full precision), laid out as
    `json.dumps(rows, indent=2)` would, written object by object."""

    def __init__(self, out: TextIO):
        self.out, self.started = out, False

    def write(self, predictions: Sequence[Prediction]) -> None:
        if not predictions:
            return
        items = ",\n".join(textwrap.indent(json.dumps(as_dict(p), indent=2), "  ") for p in predictions)
        self.out.write(("[\n" if not self.started else ",\n") + items)
        self.started = True

    def close(self) -> None:
        if self.started:
            self.out.write("\n]\n")


class CsvWriter:
    """CSV with a header row path,p_fake,label,model,resampled,ood,ood_score (full precision)."""

    def __init__(self, out: TextIO):
        self.out, self.started = out, False

    def write(self, predictions: Sequence[Prediction]) -> None:
        if not predictions:
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if not self.started:
            writer.writerow(COLUMNS)
            self.started = True
        writer.writerows(
            (p.path, repr(p.p_fake), p.label, p.model, p.resampled, "" if p.ood is None else p.ood,
             "" if p.ood_score is None else repr(p.ood_score))
            for p in predictions
        )  # fmt: skip
        self.out.write(buffer.getvalue())

    def close(self) -> None:
        pass


WRITERS = {"table": TableWriter, "json": JsonWriter, "csv": CsvWriter}


def render(kind: str, predictions: Sequence[Prediction]) -> str:
    """All of `predictions` in one format, as one string."""
    out = io.StringIO()
    writer = WRITERS[kind](out)
    writer.write(predictions)
    writer.close()
    return out.getvalue()


def format_table(predictions: Sequence[Prediction]) -> str:
    """Aligned columns path, P(fake) (4 decimals), label, model, resampled, out of distribution; one line per image."""
    return render("table", predictions)


def format_json(predictions: Sequence[Prediction]) -> str:
    return render("json", predictions)


def format_csv(predictions: Sequence[Prediction]) -> str:
    return render("csv", predictions)


FORMATTERS = {"table": format_table, "json": format_json, "csv": format_csv}
