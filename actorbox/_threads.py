"""Starting actorbox's own threads without ever waiting on them.

``threading.Thread.start()`` waits until the new thread reports that it started. Near a
memory limit the new thread can fail before it does (CPython 3.11's bootstrap raises
MemoryError allocating its state lock: ``Exception ignored in thread started by ...
KeyError``), and the starter then waits for ever. On an actor's dispatch path that stops
the whole actor. :func:`start_thread` starts the OS thread with ``_thread.start_new_thread``,
which raises at once when no thread can be had (``RuntimeError: can't start new thread``)
and has no handshake to wait on. The thread's own setup (its name) is best effort, and
what its main raises is printed.

A process forked on such a thread (plugin code's ``multiprocessing`` child, say) has that
thread's dummy for its main thread; CPython < 3.12 leaves it a dummy there, and
threading's shutdown in the child then fails (``AssertionError``: a multiprocessing child
exits with 1). :func:`_main_thread_after_fork` makes it a main thread, as 3.12 does.
"""

from __future__ import annotations

import _thread
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any


class StartedThread:
    """A thread :func:`start_thread` started: its ident, and a way to wait for its end."""

    __slots__ = ("_done", "ident", "name")

    def __init__(self, name: str, done: Any) -> None:
        self.name = name
        self.ident = 0
        self._done = done  # a _thread lock, held until the thread's main has returned

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the thread to end; True when it has."""
        if self._done.acquire(timeout=timeout):
            self._done.release()
            return True
        return False

    def is_current(self) -> bool:
        return _thread.get_ident() == self.ident


def start_thread(name: str, main: Callable[..., object], *args: Any) -> StartedThread:
    """Start a daemon thread that runs ``main(*args)``; returns without waiting for it.

    Raises at once when the thread cannot be had (RuntimeError, or MemoryError for the
    little this allocates). The thread is named ``name`` for ``threading`` (a dummy
    thread: ``threading.current_thread().name``), when there is memory for that."""
    done = _thread.allocate_lock()
    done.acquire()
    started = StartedThread(name, done)
    started.ident = _thread.start_new_thread(_bootstrap, (name, main, args, done))
    return started


def _bootstrap(name: str, main: Callable[..., object], args: tuple[Any, ...], done: Any) -> None:
    named: threading.Thread | None = None
    try:
        try:
            named = threading.current_thread()  # (a _DummyThread, registered with threading)
            named.name = name
        except BaseException:  # (no memory for it, say): the thread runs unnamed
            pass
        try:
            main(*args)
        except BaseException:  # mains report their own failures; this is a bug in one
            try:
                traceback.print_exc()
            except BaseException:
                pass
    finally:
        try:
            _forget(named)
        finally:
            done.release()


def _forget(named: threading.Thread | None) -> None:
    """Take the ending thread's dummy out of ``threading``'s registry, as a Thread's own end
    does (Python < 3.13 never does for a dummy: its ident, reused, would show it again)."""
    if named is None:
        return
    active: dict[int, threading.Thread] | None = getattr(threading, "_active", None)
    lock: Any = getattr(threading, "_active_limbo_lock", None)
    if active is None or lock is None:
        return
    with lock:
        if active.get(_thread.get_ident()) is named:
            del active[_thread.get_ident()]


def _main_thread_after_fork() -> None:
    """In a child forked on a thread of ours (CPython < 3.12): its dummy, now the child's main
    thread for threading, becomes a real main thread (3.12's own fix: gh-102512)."""
    try:
        main: Any = threading.main_thread()
        names: Any = threading  # (its private names, untyped)
        if isinstance(main, names._DummyThread):
            main.__class__ = names._MainThread
            main._name = "MainThread"
            main._daemonic = False
            main._set_tstate_lock()
    except BaseException:  # (no memory for it, say): the child runs on as CPython left it
        pass


if sys.version_info < (3, 12):
    os.register_at_fork(after_in_child=_main_thread_after_fork)  # (after threading's own: registered first)
