"""A client other than rmcp: the official Python MCP SDK (PyPI `mcp`).

Connects to a Switchboard gateway over streamable HTTP (`http URL`), over
legacy HTTP+SSE (`sse URL`, the gateway's `/sse`), or by starting a command
that speaks stdio, such as the bridge (`stdio COMMAND ARGS...`), exercises tools,
prompts, resources and sampling, and prints one JSON object describing what
it saw. The Rust test that runs it asserts on that object.
"""

import asyncio
import json
import sys

import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError


async def sample(_context, params):
    """Answers the server's sampling request, naming this client."""
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text="sampled by python-sdk"),
        model="python-sdk-model",
    )


def texts(result):
    return "\n".join(c.text for c in result.content if getattr(c, "text", None))


async def exercise(target):
    seen = {}
    async with Client(
        target,
        sampling_callback=sample,
        client_info=types.Implementation(name="python-sdk", version="1.0.0"),
    ) as client:
        seen["protocol"] = client.protocol_version
        seen["server"] = client.server_info.name if client.server_info else None
        tools = await client.list_tools()
        seen["tools"] = sorted(t.name for t in tools.tools)
        echoed = await client.call_tool("everything.echo", {"message": "from python"})
        seen["echo"] = texts(echoed)
        try:
            await client.call_tool("everything.no-such-tool", {})
            seen["unknown_tool"] = {"text": "no error"}
        except MCPError as error:
            seen["unknown_tool"] = {"code": error.error.code, "text": error.error.message}
        prompts = await client.list_prompts()
        seen["prompts"] = sorted(p.name for p in prompts.prompts)
        prompt = await client.get_prompt("everything.args-prompt", {"city": "Porto"})
        seen["prompt"] = json.dumps([m.model_dump(mode="json") for m in prompt.messages])
        resources = await client.list_resources()
        seen["resources"] = [r.uri for r in resources.resources][:3]
        read = await client.read_resource(str(resources.resources[0].uri))
        seen["read_uri"] = str(read.contents[0].uri)
        sampled = await client.call_tool(
            "everything.trigger-sampling-request", {"prompt": "python?"}
        )
        seen["sampled"] = texts(sampled)
    return seen


async def main():
    mode = sys.argv[1]
    if mode == "http":
        target = sys.argv[2]
    elif mode == "sse":
        target = sse_client(sys.argv[2])
    else:
        target = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:])
    print(json.dumps(await exercise(target)))


asyncio.run(main())
