"""Making text an actor wrote safe to show on a terminal.

An actor chooses the bytes of its stderr lines, its log events and its extension's
names; shown raw, an escape sequence in them could move the cursor, rewrite what the
host printed, retitle the window or (on some terminals) answer back as input. Every
place that shows such text passes it through ``escape_controls`` first.
"""

from __future__ import annotations

import re

# C0 controls (but tab), DEL and the C1 controls (U+0080-U+009F: 0x9b alone starts a CSI
# sequence on some terminals). Ordinary Unicode passes unchanged.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROLS_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Each control present is replaced in one str.replace pass (~1 ns a character), not by a
# regex callback per occurrence (~0.5 µs each: a flood of log events full of them held the
# host's loop for 0.4 s a read). No replacement holds a control, so the passes don't interact.
_ESCAPES = tuple((chr(c), f"\\x{c:02x}") for c in (*range(0x00, 0x09), *range(0x0a, 0x20), *range(0x7f, 0xa0)))


def escape_controls(text: str, *, newlines: bool = False) -> str:
    """``text`` with control characters written as ``\\xNN`` (``"\\x1b[2J"`` -> ``"\\\\x1b[2J"``).

    Tabs stay, and so do newlines when ``newlines`` is true (multi-line text such as
    a traceback); backslashes are left alone, so escaping twice changes nothing more.
    """
    if (_CONTROLS_BUT_NEWLINE if newlines else _CONTROLS).search(text) is None:
        return text
    for char, escaped in _ESCAPES:
        if char in text and not (newlines and char == "\n"):
            text = text.replace(char, escaped)
    return text
