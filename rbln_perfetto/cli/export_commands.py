"""`rbln-perfetto export`: a capture's Perfetto traces, one per submodule invocation and one of the whole run."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .common import bounded_int, print_export_result


def cmd_export(args) -> int:
    from ..exporter.export import export

    if not (args.per_invocation or args.aggregate):
        raise UsageError("--no-per-invocation and --no-aggregate together leave nothing to write; drop one")
    result = export(args.capture, args.out or Path(args.capture).parent, per_invocation=args.per_invocation,
                    aggregate=args.aggregate, compression_level=args.compression_level, overwrite=args.force)
    print_export_result(result)
    return 0


def add_export_command(sub) -> None:
    """Add `export` to the `rbln-perfetto` subcommands `sub`."""
    exp = sub.add_parser("export", help="export a capture to Perfetto traces")
    exp.add_argument("capture", help="a capture.rblncap file")
    exp.add_argument("-o", "--out", help="output directory (default: beside the capture)")
    exp.add_argument("--force", action="store_true",
                     help="if the output directory holds another run's traces or capture, remove them (refused otherwise)")
    exp.add_argument("--no-per-invocation", dest="per_invocation", action="store_false",
                     help="write only aggregate.pb, not one file per submodule invocation")
    exp.add_argument("--no-aggregate", dest="aggregate", action="store_false",
                     help="write only the per-invocation files, not aggregate.pb")
    exp.add_argument("--compression-level", type=bounded_int("a zlib level", 0, 9), metavar="0-9",
                     help="zlib level of the compressed packets (default: the codec's default, about 15 B per command)")
    exp.set_defaults(func=cmd_export)
