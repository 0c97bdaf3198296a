"""Tests for sandbox.OutputTail: what an actor's death report quotes from its stderr."""

from __future__ import annotations

from sandbox import OutputTail


def test_crash_report_head_survives_long_thread_dumps() -> None:
    """The 'Fatal Python error' line and the crashing stack are quoted even after many more lines."""
    tail = OutputTail("(a)", None, maxlen=10)
    tail._line(b"starting")
    tail._line(b"Fatal Python error: Segmentation fault")
    tail._line(b"Current thread 0x1 (most recent call first):")
    for i in range(200):  # other threads' stacks follow
        tail._line(f'  File "x.py", line {i} in f'.encode())
    text = tail.text()
    assert text.splitlines()[0] == "Fatal Python error: Segmentation fault"
    assert "Current thread" in text and len(text.splitlines()) <= 20


def test_without_a_crash_the_last_lines_are_quoted() -> None:
    """With no crash report, the last n lines are what the error quotes."""
    tail = OutputTail("(a)", None, maxlen=40)
    for i in range(30):
        tail._line(f"line {i}".encode())
    assert tail.text(3) == "line 27\nline 28\nline 29"


def test_lines_are_kept_and_echoed_with_controls_escaped() -> None:
    """Escape sequences in a line are escaped where it is kept and where it is echoed; tabs and Unicode stay."""
    import io

    echo = io.StringIO()
    tail = OutputTail("(a)", echo)
    tail._line("\x1b[2Jcleared\x07\tünïcode \x9b31m\r".encode())
    assert tail.text() == "\\x1b[2Jcleared\\x07\tünïcode \\x9b31m"
    assert echo.getvalue() == "(a) \\x1b[2Jcleared\\x07\tünïcode \\x9b31m\n"


def test_escape_controls_keeps_newlines_only_when_asked() -> None:
    """escape_controls escapes C0, DEL and C1 (and newlines unless asked to keep them), and is idempotent."""
    from sandbox import escape_controls

    assert escape_controls("a\nb\x00\x7f") == "a\\x0ab\\x00\\x7f"
    assert escape_controls("a\nb\x1b", newlines=True) == "a\nb\\x1b"
    once = escape_controls("\x1b[1m ok é 漢")
    assert once == "\\x1b[1m ok é 漢" and escape_controls(once) == once
