"""`python -m rbln_perfetto.cli ...`: the `rbln-perfetto` command (torchrun launches ranks this way)."""

import sys

from .main import main

sys.exit(main())
