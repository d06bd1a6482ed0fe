"""``corral ui``: a live web dashboard of a namespace, served by corral itself from NATS state.

:class:`Dashboard` ties together the read model (:mod:`corral.ui.model`), the watches that feed
it (:mod:`corral.ui.feeds`), the server-sent-event hub (:mod:`corral.ui.hub`) and the HTTP app
(:mod:`corral.ui.app`); the page itself is plain HTML, CSS and JavaScript in ``static/``.
"""

from corral.ui.model import ReadModel
from corral.ui.server import DEFAULT_HOST, DEFAULT_PORT, Dashboard, check_trace_url

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Dashboard", "ReadModel", "check_trace_url"]
