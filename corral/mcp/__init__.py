"""``corral mcp``: the substrate as Model Context Protocol tools, one server process per agent (docs/agents.md).

:class:`AgentSession` is the agent on NATS (presence, claims, inbox wake-ups, dispatcher);
:func:`build_server` puts its tools and resources on an SDK server; :func:`serve` runs both over
stdio or loopback HTTP with a bearer token.
"""

from corral.mcp.notify import Notifier
from corral.mcp.run import serve
from corral.mcp.server import CorralMCP, build_server
from corral.mcp.session import AgentSession

__all__ = ["AgentSession", "CorralMCP", "Notifier", "build_server", "serve"]
