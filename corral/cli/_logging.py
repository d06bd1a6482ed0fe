"""Logging for long-running commands: one readable line per record on stderr."""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = False) -> None:
    """Configure root logging once; ``CORRAL_LOG`` (DEBUG/INFO/WARNING) overrides the level."""
    level = os.environ.get("CORRAL_LOG", "INFO" if verbose else "WARNING").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("nats").setLevel(logging.CRITICAL if level != "DEBUG" else logging.DEBUG)
