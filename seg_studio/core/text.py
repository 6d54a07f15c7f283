"""Text from files shown on a terminal: control characters escaped, so a name cannot act.

A class name, a file name or a DICOM tag is untrusted: ``"\\x1b[2J"`` clears a terminal,
``"\\x1b]0;...\\x07"`` retitles it, ``"\\n"`` forges a line of output and U+202E reverses what
follows. ``printable`` replaces every such character by a visible escape (``\\x1b``, ``\\n``,
``\\u202e``), so what is printed is what the file says, inert.
"""

from __future__ import annotations

from typing import Any

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, keep_newlines: bool = False, keep: str = "") -> str:
    """``str(text)`` with control, format (bidi overrides) and separator characters escaped.

    ``keep_newlines`` keeps ``\\n`` (for multi-line output that we compose ourselves); ``keep``
    names other characters to let through (``"\\r\\t"`` for a progress bar).
    """
    s = str(text)
    if s.isprintable():  # Python counts categories Cc, Cf, Cs, Co, Cn, Zl, Zp (not space) as not
        return s
    allowed = keep + ("\n" if keep_newlines else "")
    return "".join(ch if ch.isprintable() or ch in allowed else _escape(ch) for ch in s)


class SafeStream:
    """A text stream that escapes what ``printable`` escapes (newlines, tabs and carriage returns
    pass): the CLI's stdout and stderr, so no name printed anywhere can act on the terminal."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(printable(text, keep="\n\r\t"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
