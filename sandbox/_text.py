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


def _hex(m: re.Match[str]) -> str:
    return f"\\x{ord(m.group()):02x}"


def escape_controls(text: str, *, newlines: bool = False) -> str:
    """``text`` with control characters written as ``\\xNN`` (``"\\x1b[2J"`` -> ``"\\\\x1b[2J"``).

    Tabs stay, and so do newlines when ``newlines`` is true (multi-line text such as
    a traceback); backslashes are left alone, so escaping twice changes nothing more.
    """
    return (_CONTROLS_BUT_NEWLINE if newlines else _CONTROLS).sub(_hex, text)
