"""Many calls in one session: the official Python MCP SDK (PyPI `mcp`) in
its session mode (`initialize`, then `Mcp-Session-Id`) against a URL that
may be a load balancer in front of several gateway replicas.

`many_calls.py URL N` calls `demo.echo` N times, each with its own text,
then `demo.progress` with a progress callback, and prints one JSON object:
how many answers were right, wrong or errors, and the progress seen.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.shared.exceptions import MCPError


def texts(result):
    return "\n".join(c.text for c in result.content if getattr(c, "text", None))


async def main():
    url, count = sys.argv[1], int(sys.argv[2])
    seen = {"right": 0, "wrong": [], "errors": [], "progress": []}
    async with Client(url, mode="legacy") as client:
        seen["protocol"] = client.protocol_version
        for i in range(count):
            text = f"python call {i}"
            try:
                result = await client.call_tool("demo.echo", {"text": text})
            except (MCPError, OSError, RuntimeError) as error:
                seen["errors"].append(f"{i}: {error}")
                continue
            if texts(result) == text and not result.is_error:
                seen["right"] += 1
            else:
                seen["wrong"].append(f"{i}: {texts(result)}")

        async def progressed(progress, total, message):
            seen["progress"].append(progress)

        result = await client.call_tool(
            "demo.progress",
            {"steps": 3, "stepMs": 20},
            progress_callback=progressed,
        )
        seen["progress_result"] = result.structured_content
    print(json.dumps(seen))


asyncio.run(main())
