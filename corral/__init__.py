"""corral: a coordination substrate for fleets of workers and AI agents on NATS JetStream.

This package is the face (the ``corral`` CLI); the logic lives in ``coord`` (substrate),
``dispatch`` (parent side) and ``workers`` (worker side).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
