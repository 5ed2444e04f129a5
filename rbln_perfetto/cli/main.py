"""`rbln-perfetto`: profile the device-split SD3, export captures, and query traces.

Deliberate errors (rbln-perfetto's own, a file that cannot be read or written, an rbln_config the
pipeline refuses) print one line naming the cause and exit non-zero; `--debug`, before or after the
command, shows the traceback. Anything else is a bug and shows its traceback. Ctrl-C exits 130 and says
what was kept. A reader that closes the pipe early (`rbln-perfetto query ... | head`) ends the command
quietly (exit 141, as SIGPIPE).
"""

from __future__ import annotations

import argparse
import os
import select
import sys

from ..errors import RblnPerfettoError, UsageError
from ..recorder.activation import package_version
from .analysis_commands import add_analysis_commands
from .export_commands import add_export_command
from .placement_commands import add_placement_commands
from .query_commands import add_query_commands
from .run_commands import add_merge_command, add_run_command
from .sql_package_commands import add_sql_package_command
from .ui_commands import add_ui_commands


DEBUG_HELP = "show tracebacks on errors"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (and `--help` shows the rest)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rbln-perfetto", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    add_run_command(sub)
    add_export_command(sub)
    add_query_commands(sub)  # summary, query
    add_ui_commands(sub)  # plot, serve, open
    add_merge_command(sub)
    add_analysis_commands(sub)  # diff, report, check
    add_sql_package_command(sub)
    add_placement_commands(sub)  # whatif, advise
    for command in sub.choices.values():  # (SUPPRESS: not given after the command, it keeps the value before it)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader closed it (a broken pipe elsewhere is a real error)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a reader that went away is caught below, not at exit
        return code
    except KeyboardInterrupt as interrupt:
        if args.debug:
            raise
        # An interrupted profile() block notes what it saved and where (`run`): said after the one line.
        kept = "".join(f"\n{note}" for note in getattr(interrupt, "__notes__", ()))
        print(f"rbln-perfetto {args.command}: interrupted{kept}", file=sys.stderr)
        return 130
    except (RblnPerfettoError, OSError) as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
            # `rbln-perfetto ... | head`: the reader has what it wanted. Exit as a process killed by
            # SIGPIPE would, quietly; stdout goes to /dev/null so the flush at exit cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + 13
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"rbln-perfetto {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
