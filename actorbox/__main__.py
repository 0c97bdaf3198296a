"""The actorbox command line: ``python -m actorbox <command>``.

Commands: ``doctor`` (check that this machine can run sandboxed actors), ``ps``
(the actors and calls in flight of this user's running Runtimes, through their
control sockets) and ``trace`` (a recorded event stream as a Chrome trace or an
HTML timeline). Each command is a ``_cmd_*`` function registered in ``_parser``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence

import structlog


def _cmd_doctor(args: argparse.Namespace) -> int:
    from . import _doctor

    checks: list[_doctor.Check] = []
    if args.json:
        # stdout carries the JSON document only: anything an actor prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            checks.extend(_doctor.run_checks())
        print(json.dumps(_doctor.json_report(checks), indent=2))
    else:
        for check in _doctor.run_checks():
            checks.append(check)
            print(check.format(), flush=True)
        print(_doctor.summary(checks))
    return _doctor.exit_code(checks)


def _cmd_ps(args: argparse.Namespace) -> int:
    from . import _control, _inspect
    from ._errors import ActorboxError

    try:
        _control.remove_stale()  # left by hosts killed before they could remove them
        sockets = _control.list_sockets()
    except ActorboxError as exc:
        print(f"ps: {exc}", file=sys.stderr)
        return 1
    snapshots = []
    for pid, path in sockets:
        if args.pid is not None and pid != args.pid:
            continue
        try:
            reply = _control.query(path, "ps", timeout=args.timeout)
        except (OSError, ValueError):
            continue  # a Runtime that just exited (or crashed and left its socket file)
        if reply.get("ok") and isinstance(reply.get("snapshot"), dict):
            snapshots.append(reply["snapshot"])
    if args.json:
        print(json.dumps({"runtimes": snapshots}, indent=2, default=str))
    elif snapshots:
        print("\n\n".join(_inspect.format_snapshot(s) for s in snapshots))
    else:
        who = f"with pid {args.pid}" if args.pid is not None else "of this user"
        print(f"no running actorbox Runtime {who} (control sockets: {_control.control_dir()})", file=sys.stderr)
    return 1 if args.pid is not None and not snapshots else 0


def _cmd_trace(args: argparse.Namespace) -> int:
    from . import _timeline, _timeline_html

    try:
        with open(args.events, encoding="utf-8", errors="replace") as f:
            records, stats = _timeline.read_events(f)
    except OSError as exc:
        print(f"trace: cannot read {args.events}: {exc}", file=sys.stderr)
        return 1
    tl = _timeline.build(records, stats)
    fmt = args.format or ("html" if (args.output or "").lower().endswith((".html", ".htm")) else "chrome")
    outputs = [(args.output, fmt)] + ([(args.html, "html")] if args.html else [])
    for path, kind in outputs:
        text = (_timeline_html.to_html(tl, args.events) if kind == "html"
                else json.dumps(_timeline.to_chrome(tl), default=str))
        if path in (None, "-"):
            sys.stdout.write(text + "\n")
            continue
        try:
            with open(path, "w", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            print(f"trace: cannot write {path}: {exc}", file=sys.stderr)
            return 1
        what = ("HTML timeline" if kind == "html"
                else "Chrome trace: open it in https://ui.perfetto.dev or chrome://tracing")
        print(f"trace: wrote {path} ({what})", file=sys.stderr)
    calls = sum(1 for b in tl.bars if not b.caller_side)
    print(f"trace: {calls} calls; {stats.describe()}", file=sys.stderr)
    if stats.malformed:
        print(f"trace: warning: {stats.malformed} line(s) were not events and were skipped", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m actorbox", description="actorbox command line tools")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="check that this machine can run sandboxed actors",
                            description="Run the checks a person would otherwise run by hand and print each "
                                        "with pass/warn/fail and the remedy; exit 1 when a required check fails.")
    doctor.add_argument("--json", action="store_true", help="print the results as one JSON document")
    doctor.set_defaults(func=_cmd_doctor)
    ps = sub.add_parser("ps", help="list the actors and calls in flight of running Runtimes",
                        description="Ask every running Runtime of this user (through its control socket) for "
                                    "its actors (pid, state, restarts, RSS, CPU, queue) and calls in flight.")
    ps.add_argument("--pid", type=int, help="only the Runtime in this process")
    ps.add_argument("--json", action="store_true", help='print {"runtimes": [...]} as one JSON document')
    ps.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each Runtime (default 5)")
    ps.set_defaults(func=_cmd_ps)
    trace = sub.add_parser("trace", help="turn a recorded event stream into a Chrome trace or an HTML timeline",
                           description="Read EVENTS (JSON lines, as ACTORBOX_TRACE_FILE records them) and write "
                                       "a Chrome trace (Perfetto, chrome://tracing) with one track per actor, a "
                                       "span per call and arrows to nested calls, or a self-contained HTML "
                                       "timeline.")
    trace.add_argument("events", metavar="EVENTS", help="the JSONL event file")
    trace.add_argument("-o", "--output", help="where to write (default: stdout); a .html name writes the timeline")
    trace.add_argument("--format", choices=("chrome", "html"), help="what -o gets (default: from its name)")
    trace.add_argument("--html", metavar="PATH", help="also write the HTML timeline to PATH")
    trace.set_defaults(func=_cmd_trace)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    # This is the application, so it owns logging: only warnings and errors, on stderr,
    # so that the report on stdout stays readable (and parseable with --json).
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
