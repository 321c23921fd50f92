"""CSV text as the published files hold it: cells quoted only when needed, rows cut into blocks.

The rules match Python's `csv` module with `QUOTE_MINIMAL` and `\n` line ends, so pandas and
R read the files as they are; rows are joined into fixed-size blocks for the xz workers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

# Finds a character that makes a cell need quotes (a C-level scan: the merge checks ~3 million
# cells an hour, and testing each character against a set cost a third of the rendering).
needs_quotes = re.compile('[,"\r\n]').search


def field_text(value: Any) -> str:
    """One CSV cell: strings as they are, booleans `True`/`False`, counts as integers."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def csv_cell(text: str) -> str:
    """Quote like the csv module's QUOTE_MINIMAL, so csv/pandas read the text back unchanged."""
    if needs_quotes(text) is None:
        return text
    return '"' + text.replace('"', '""') + '"'


def csv_line(cells: Sequence[str]) -> str:
    """Cells joined as one CSV line (without its newline)."""
    line = ",".join(cells)
    # Fast path: no cell needs quoting when the line has no quote, CR, LF or extra comma.
    if ('"' not in line and "\n" not in line and "\r" not in line
            and line.count(",") == len(cells) - 1):
        return line
    return ",".join(map(csv_cell, cells))


def blocks_of(rows: Iterable[bytes], block_size: int, header: bytes = b"") -> Iterator[bytes]:
    """Cut a stream of rows into blocks of at least `block_size` bytes, at row boundaries.

    The cut points depend only on the bytes, never on timing or thread count, which keeps the
    compressed output byte-identical from run to run. No rows and no header still give one
    (empty) block, so an hour without tweets is a valid, empty `.xz` file.
    """
    parts = [header] if header else []
    size = len(header)
    cut = False
    for row in rows:
        parts.append(row)
        size += len(row)
        if size >= block_size:
            yield b"".join(parts)
            parts, size, cut = [], 0, True
    if parts or not cut:
        yield b"".join(parts)


def header_line(columns: Sequence[str]) -> bytes:
    return (csv_line(columns) + "\n").encode()
