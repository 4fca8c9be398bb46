"""A third-party MCP server over https: the Python SDK's MCPServer behind
uvicorn with TLS. Usage: tls_server.py PORT CERT KEY."""

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
server = MCPServer("tls-echo")


@server.tool()
def whoami() -> str:
    """Says how it was reached."""
    return "served over TLS"


# The gateway reaches it as 127.0.0.1; rebinding protection is the
# gateway's job in this test, not this fixture's.
security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
app = server.streamable_http_app(transport_security=security)
uvicorn.run(app, host="127.0.0.1", port=port, ssl_certfile=cert, ssl_keyfile=key, log_level="warning")
