"""Only the optional C extension lives here; everything else is in pyproject.toml.

`rbln_perfetto._packet_scan` speeds up the embedded SQL backend's reader. It is optional: where it
cannot be compiled, the install goes on and the reader uses its pure-Python path (same results).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("rbln_perfetto._packet_scan", ["rbln_perfetto/_packet_scan.c"], optional=True,
                             extra_compile_args=["-O2"])])
