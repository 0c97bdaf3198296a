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
