"""`rbln-perfetto sql-package`: where the `rbln` PerfettoSQL package is installed, and what its modules
hold, for trace_processor (`--add-sql-package DIR`) and the UI's query page (through `serve`)."""

from __future__ import annotations

import re

from ..query.perfetto_sql import PACKAGE_DIR, module_names, module_path

_DEFINES = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?PERFETTO\s+(TABLE|VIEW)\s+(rbln_[A-Za-z0-9_]*)", re.I)


def module_tables(name: str) -> list[str]:
    """The public tables and views module `name` creates (not its `_rbln_*` intermediate ones)."""
    return [table for _, table in _DEFINES.findall(module_path(name).read_text())]


def cmd_sql_package(args) -> int:
    if args.path:
        print(PACKAGE_DIR)
        return 0
    print(f"the rbln PerfettoSQL package: {PACKAGE_DIR}")
    print(f"  trace_processor_shell --add-sql-package {PACKAGE_DIR} TRACE   (rbln-perfetto serve passes it)")
    for name in module_names():
        print(f"  INCLUDE PERFETTO MODULE {name};  -- {', '.join(module_tables(name))}")
    return 0


def add_sql_package_command(sub) -> None:
    """Add `sql-package` to the `rbln-perfetto` subcommands `sub`."""
    p = sub.add_parser("sql-package", help="where the rbln PerfettoSQL package is installed, and its modules "
                                           "(INCLUDE PERFETTO MODULE rbln.commands; ...)")
    p.add_argument("--path", action="store_true",
                   help="print only the package's directory (for trace_processor_shell --add-sql-package)")
    p.set_defaults(func=cmd_sql_package)
