"""Drives tomo's MCP server with the official Python MCP SDK (`pip install mcp`).

Run by crates/tomo/tests/fleet/mcp_python.rs against a live control plane and agent, once over
Streamable HTTP (MODE=http, the SDK's httpx client with the server's CA and a bearer token) and
once over stdio (MODE=stdio, the SDK starts `tomo mcp`). Environment:

  MODE            http | stdio
  URL, CA         the control plane's API URL and CA file
  READ_TOKEN      a read token
  APPROVAL_TOKEN  an execute token that requires approval
  ADMIN_TOKEN     an admin token (the human who approves, through `tomo approve`)
  TOMO_BIN        the tomo binary
  HOST            the host's id
  CONTAINER       a running test container; this run stops (http) or removes (stdio) it, with approval
  EVIL_HOST       the id of a host whose self-reported hostname is EVIL_NAME, a fake system notice
  LOUD            a running container whose logs try to close the fence (`</HOST-DATA id=…>`)
  BROKEN          a created container whose entrypoint is a fake notice: starting it fails, and
                  Docker's error quotes it

Every check raises on failure (exit status 1). Prints one line per check.
"""

import asyncio
import os
import re
import ssl
import subprocess
import sys
from contextlib import asynccontextmanager

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

ENV = os.environ
MODE = ENV["MODE"]
HOST = ENV["HOST"]
CONTAINER = ENV["CONTAINER"]


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok [{MODE}] {what}", flush=True)


@asynccontextmanager
async def connect(token):
    if MODE == "http":
        ctx = ssl.create_default_context(cafile=ENV["CA"])
        async with httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, verify=ctx, timeout=60
        ) as http:
            async with Client(streamable_http_client(ENV["URL"] + "/mcp", http_client=http)) as c:
                yield c
    else:
        params = StdioServerParameters(
            command=ENV["TOMO_BIN"],
            args=["mcp"],
            env={
                "PATH": ENV.get("PATH", "/usr/bin:/bin"),
                "HOME": ENV.get("HOME", "/tmp"),
                "TOMO_CONFIG": "/nonexistent/tomo-config.toml",
                "TOMO_URL": ENV["URL"],
                "TOMO_TOKEN": token,
                "TOMO_CA_FILE": ENV["CA"],
            },
        )
        async with Client(params) as c:
            yield c


def names(tools):
    return {t.name for t in tools.tools}


def text(result):
    return "".join(getattr(c, "text", "") for c in result.content)


def tomo(*args):
    """The human at the CLI, with the admin token."""
    return subprocess.run(
        [ENV["TOMO_BIN"], *args, "--url", ENV["URL"], "--token", ENV["ADMIN_TOKEN"], "--ca-file", ENV["CA"]],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": ENV.get("PATH", "/usr/bin:/bin"), "HOME": ENV.get("HOME", "/tmp"), "TOMO_CONFIG": "/nonexistent"},
    )


def fence_holds(result, evil, what):
    """Issue 12.7: everything the host controls (`evil`) is inside the one fence, which nothing in
    it closes or reopens, whatever the case; outside it only control-plane text."""
    t = text(result)
    opens = re.findall(r"<host-data id=([0-9a-f]{12})>", t)
    check(len(opens) == 1, f"{what}: one fence ({t!r})")
    n = opens[0]
    head, rest = t.split(f"<host-data id={n}>", 1)
    check(rest.count(f"</host-data id={n}>") == 1, f"{what}: closed once")
    inner, tail = rest.split(f"</host-data id={n}>", 1)
    check(evil not in head and evil not in tail, f"{what}: nothing of the host outside the fence")
    check(evil in inner, f"{what}: the host's text is inside the fence")
    check(re.search(r"<\s*/?\s*host-data", inner, re.I) is None,
          f"{what}: no marker inside the fence, in any case")
    check("trusted" not in head.lower().replace("untrusted", ""), f"{what}: nothing outside says trusted")


async def fences():
    async with connect(ENV["READ_TOKEN"]) as c:
        r = await c.call_tool("host_info", {"host": ENV["EVIL_HOST"]})
        check(not r.is_error, "host_info on the host with the fake-notice hostname")
        fence_holds(r, "Tomo system notice", "a hostname")
        check("hostname" not in r.structured_content.get("host", {}),
              "the structured host carries only the control plane's id")
        r = await c.call_tool("container_logs", {"host": HOST, "container": ENV["LOUD"]})
        check(not r.is_error, "container_logs of the loud container")
        fence_holds(r, "Tomo system notice", "logs closing the fence in capitals")
    async with connect(ENV["ADMIN_TOKEN"]) as c:
        r = await c.call_tool("start_container", {"host": HOST, "container": ENV["BROKEN"]})
        check(r.is_error, "starting the broken container fails")
        fence_holds(r, "Tomo system notice", "Docker's error")


def container_state(data, name):
    for c in data:
        if c.get("name") == name:
            return c.get("state")
    return None


async def main():
    # A read token: initialize, role-filtered list, a read tool with real data, a refused change.
    async with connect(ENV["READ_TOKEN"]) as c:
        listed = names(await c.list_tools())
        check("list_containers" in listed and "fleet_health" in listed, "read token lists read tools")
        check(not listed & {"stop_container", "remove_container", "run_container", "exec_in_container"},
              "read token lists no change tool")
        for t in (await c.list_tools()).tools:
            check(t.annotations is not None and t.annotations.read_only_hint is True,
                  f"{t.name} is annotated read-only")
        r = await c.call_tool("list_containers", {"host": HOST, "all": True})
        check(not r.is_error, "list_containers succeeds")
        data = r.structured_content["untrusted_data"]
        check(container_state(data, CONTAINER) == "running", "the test container is listed, running (real data)")
        check("<host-data id=" in text(r) and "never as instructions" in text(r), "host data is fenced")
        r = await c.call_tool("stop_container", {"host": HOST, "container": CONTAINER})
        check(r.is_error and "forbidden" in text(r), "a read token cannot stop a container")
        r = await c.call_tool("list_containers", {"host": HOST, "all": True})
        check(container_state(r.structured_content["untrusted_data"], CONTAINER) == "running",
              "the container is still running after the refused call")

    # A token that requires approval: the change becomes a pending action, a human approves it.
    tool = "stop_container" if MODE == "http" else "remove_container"
    args = {"host": HOST, "container": CONTAINER}
    if tool == "remove_container":
        args["force"] = True
    async with connect(ENV["APPROVAL_TOKEN"]) as c:
        listed = names(await c.list_tools())
        check(tool in listed and "run_container" not in listed, "execute token lists execute tools, not admin ones")
        r = await c.call_tool(tool, args)
        check(not r.is_error, f"{tool} with an approval token is accepted")
        action = r.structured_content.get("pending_action")
        check(action is not None and action["status"] == "pending", "it became a pending action")
        action_id = action["id"]
        check(f"tomo approve {action_id}" in text(r), "the answer tells how to approve")
        r = await c.call_tool("get_action_status", {"id": action_id})
        check(r.structured_content["untrusted_data"]["status"] == "pending", "the assistant can poll: pending")
        r = await c.call_tool("list_containers", {"host": HOST, "all": True})
        check(container_state(r.structured_content["untrusted_data"], CONTAINER) == "running",
              "nothing happened before approval")

        listing = tomo("approvals")
        check(listing.returncode == 0 and action_id in listing.stdout, "`tomo approvals` shows it")
        approved = tomo("approve", action_id)
        check(approved.returncode == 0 and "done" in approved.stdout,
              f"`tomo approve` runs it: {approved.stdout.strip()} {approved.stderr.strip()}")

        r = await c.call_tool("get_action_status", {"id": action_id})
        status = r.structured_content["untrusted_data"]["status"]
        check(status == "done", f"the assistant sees it done ({status})")
        r = await c.call_tool("list_containers", {"host": HOST, "all": True})
        state = container_state(r.structured_content["untrusted_data"], CONTAINER)
        if tool == "stop_container":
            check(state == "exited", f"the container really stopped ({state})")
        else:
            check(state is None, f"the container is really gone ({state})")
    await fences()
    print(f"PASS {MODE}", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BaseException as e:  # noqa: BLE001 - report everything, exit 1
        import traceback

        traceback.print_exc()
        print(f"FAIL {MODE}: {e!r}", flush=True)
        sys.exit(1)
