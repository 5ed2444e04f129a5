"""Only the optional C extensions live here; everything else is in pyproject.toml.

`rbln_perfetto.reader._packet_scan` speeds up the embedded SQL backend's reader, `rbln_perfetto.query._sqlite_tables`
its table building and EXTRACT_ARG (it needs SQLite's headers and links the libsqlite3 that Python's
sqlite3 uses). Both are optional: where one cannot be compiled, the install goes on and the backend
uses its pure-Python path for that part (same results).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("rbln_perfetto.reader._packet_scan", ["rbln_perfetto/reader/_packet_scan.c"], optional=True,
                             extra_compile_args=["-O2"]),
                   Extension("rbln_perfetto.query._sqlite_tables", ["rbln_perfetto/query/_sqlite_tables.c"], optional=True,
                             libraries=["sqlite3"], extra_compile_args=["-O2"])])
