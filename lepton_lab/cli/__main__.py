"""``python -m lepton_lab.cli ARGS`` is ``lepton ARGS``."""

import sys

from . import main

sys.exit(main())
