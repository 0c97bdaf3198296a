"""The actorbox command line: ``python -m actorbox <command>``.

Commands: ``doctor`` (check that this machine can run sandboxed actors). Each
command is a ``_cmd_*`` function registered in ``_parser``; ``ps`` and ``trace``
will join them.
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m actorbox", description="actorbox command line tools")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="check that this machine can run sandboxed actors",
                            description="Run the checks a person would otherwise run by hand and print each "
                                        "with pass/warn/fail and the remedy; exit 1 when a required check fails.")
    doctor.add_argument("--json", action="store_true", help="print the results as one JSON document")
    doctor.set_defaults(func=_cmd_doctor)
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
