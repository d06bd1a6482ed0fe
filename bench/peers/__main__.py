"""``python -m bench.peers``: see :mod:`bench.peers.runner`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.peers.runner import main

sys.exit(main())
