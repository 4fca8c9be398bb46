"""A stdio MCP server whose JSON reader is stricter than the gateway's, as
some servers' are: integers beyond 2**53 (which JavaScript cannot hold
exactly) are refused. A line it cannot read gets a JSON-RPC parse error
with a null id, as JSON-RPC 2.0 says; everything else is answered as MCP.

Tools: `echo` returns its arguments as JSON text.
"""

import json
import sys

SAFE = 2**53


def strict_int(text):
    value = int(text)
    if abs(value) > SAFE:
        raise ValueError(f"integer {text} is beyond 2**53")
    return value


def answer(id, result=None, error=None):
    message = {"jsonrpc": "2.0", "id": id}
    if error is None:
        message["result"] = result
    else:
        message["error"] = error
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def handle(message):
    method, id = message.get("method"), message.get("id")
    params = message.get("params") or {}
    if id is None:
        return  # notifications
    if method == "initialize":
        answer(
            id,
            {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "strict", "version": "1"},
            },
        )
    elif method == "ping":
        answer(id, {})
    elif method == "tools/list":
        tool = {"name": "echo", "inputSchema": {"type": "object"}}
        answer(id, {"tools": [tool]})
    elif method == "tools/call" and params.get("name") == "echo":
        text = json.dumps(params.get("arguments") or {}, sort_keys=True)
        answer(id, {"content": [{"type": "text", "text": text}]})
    else:
        answer(id, error={"code": -32601, "message": f"unknown method {method}"})


for line in sys.stdin:
    try:
        message = json.loads(line, parse_int=strict_int)
    except ValueError as error:
        answer(None, error={"code": -32700, "message": f"Parse error: {error}"})
        continue
    handle(message)
