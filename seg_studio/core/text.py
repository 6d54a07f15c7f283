"""Text from files shown on a terminal: control characters escaped, so a name cannot act.

A class name, a file name or a DICOM tag is untrusted: ``"\\x1b[2J"`` clears a terminal,
``"\\x1b]0;...\\x07"`` retitles it, ``"\\n"`` forges a line of output and U+202E reverses what
follows. ``printable`` replaces every such character by a visible escape (``\\x1b``, ``\\n``,
``\\u202e``), so what is printed is what the file says, inert.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, keep_newlines: bool = False) -> str:
    """``str(text)`` with control, format (bidi overrides) and separator characters escaped.

    ``keep_newlines`` keeps ``\\n`` (for multi-line output that we compose ourselves).
    """
    s = str(text)
    if s.isprintable():  # Python counts categories Cc, Cf, Cs, Co, Cn, Zl, Zp (not space) as not
        return s
    return "".join(ch if ch.isprintable() or (ch == "\n" and keep_newlines) else _escape(ch) for ch in s)
