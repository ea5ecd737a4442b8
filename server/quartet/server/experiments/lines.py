"""From chunks of bytes to lines, and from a line to its cells: the text layer of the CSV files.

Both work on what has arrived so far, so a file of any size passes through in pieces.
"""

from __future__ import annotations

import codecs

MAX_LINE_LENGTH = 65_536  # characters; bounds the memory one line can take


class Lines:
    """Complete lines from chunks of bytes, decoded as UTF-8 (a leading BOM is dropped).

    A line longer than MAX_LINE_LENGTH comes out as None, and what follows it up to its newline is
    dropped as it arrives, so it never sits in memory whole.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._partial = ""  # the start of a line whose newline has not arrived yet
        self._too_long = False  # the pending line is already over the limit
        self.bytes_read = 0
        self.next_line = 1

    def feed(self, data: bytes, *, final: bool = False) -> tuple[int, list[str | None]]:
        """The number of the first line completed by data, and the lines it completes.

        With final, the last line counts as complete even without a newline.
        """
        self.bytes_read += len(data)
        pieces = self._decoder.decode(data, final).split("\n")
        tail = pieces.pop()
        lines: list[str | None] = []
        if pieces:
            lines.append(None if self._too_long else self._partial + pieces[0])
            lines += pieces[1:]
            self._partial, self._too_long = tail, False
        elif not self._too_long:
            self._partial += tail
        if final and (self._partial or self._too_long):
            lines.append(None if self._too_long else self._partial)
            self._partial, self._too_long = "", False
        lines = [None if line is None or len(line) > MAX_LINE_LENGTH else line for line in lines]
        if len(self._partial) > MAX_LINE_LENGTH:
            self._partial, self._too_long = "", True
        first = self.next_line
        self.next_line += len(lines)
        return first, lines


def split_cells(line: str) -> list[str] | None:
    """The cells of one line (not yet stripped), or None if a quote is not closed.

    A cell may be quoted (RFC 4180: wrapped in `"`, with `""` for a quote inside) to hold a comma;
    whitespace around a quoted cell is ignored, as around any other.
    """
    if '"' not in line:
        return line.split(",")
    cells: list[str] = []
    start = 0
    while True:
        begin = start
        while begin < len(line) and line[begin] in " \t":
            begin += 1
        if begin < len(line) and line[begin] == '"':
            cell, end = _quoted(line, begin + 1)
            if end < 0:
                return None
            cells.append(cell)
            if end == len(line):
                return cells
            start = end + 1
            continue
        comma = line.find(",", begin)
        if comma < 0:
            cells.append(line[start:])
            return cells
        cells.append(line[start:comma])
        start = comma + 1


def _quoted(line: str, start: int) -> tuple[str, int]:
    """The quoted cell that starts at `start` (after its opening quote), and the index of the comma
    that ends it (len(line) at the end of the line); -1 if malformed."""
    parts: list[str] = []
    while True:
        quote = line.find('"', start)
        if quote < 0:
            return "", -1
        parts.append(line[start:quote])
        if line.startswith('"', quote + 1):  # "" is a quote inside the cell
            parts.append('"')
            start = quote + 2
            continue
        end = quote + 1
        while end < len(line) and line[end] in " \t\r":
            end += 1
        if end < len(line) and line[end] != ",":
            return "", -1
        return "".join(parts), end
