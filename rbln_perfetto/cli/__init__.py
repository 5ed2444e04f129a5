"""The `rbln-perfetto` command: one module per command group, option helpers and the table printer shared.

`main` is the console script's entry point (`rbln_perfetto.cli:main`); `python -m rbln_perfetto.cli`
runs the same.
"""

from .main import main

__all__ = ["main"]
