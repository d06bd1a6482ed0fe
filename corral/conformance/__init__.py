"""The conformance kit: checks that a worker written in any language keeps the protocol's promises.

:func:`run_kit` starts a nats-server, provisions a namespace and the queue's consumers, runs the
worker command the way an operator would (:mod:`corral.conformance.process`) and drives it through
the scenarios of :mod:`corral.conformance.scenarios`, each ending as a :class:`Row` (pass, fail or
unsupported). docs/protocol-spec.md is the specification checked; docs/any-language.md says how to
run the kit.
"""

from corral.conformance.kit import KitConfig, run_kit
from corral.conformance.rows import Outcome, Row

__all__ = ["KitConfig", "Outcome", "Row", "run_kit"]
