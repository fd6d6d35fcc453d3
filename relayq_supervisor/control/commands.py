"""The control commands: one documented function per command, in one table.

Each handler takes the supervisor (as the narrow Supervision protocol), the request's
validated args and the peer, and returns the reply's result. Refusals are raised as
RelayqErrors; control/server.py turns them into reply codes (control.protocol).
"""
from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from relayq_supervisor.background import start_task
from relayq_supervisor.control import operator
from relayq_supervisor.control.operator import Operated
from relayq_supervisor.errors import BadRequest, ShuttingDown


class Peer(Protocol):
    pid: int
    uid: int


class Supervision(Protocol):
    """What the control commands need of the supervisor."""

    @property
    def arbiter(self) -> Operated: ...

    def status(self) -> dict[str, Any]: ...

    async def reload(self, who: str) -> dict[str, Any]: ...

    def request_shutdown(self, why: str) -> None: ...

    def audit(self, kind: str, **fields: Any) -> dict[str, Any]: ...

    async def cluster_status(self) -> dict[str, Any]: ...

    async def cluster_why(self, node: str, name: str) -> dict[str, Any]: ...


Handler = Callable[[Supervision, dict[str, Any], Peer], Awaitable[dict[str, Any]]]


def who(cmd: str, peer: Peer) -> str:
    return f"operator relayqctl {cmd} by uid {peer.uid} pid {peer.pid}"


async def status(sup: Supervision, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """The supervisor header and every program (or the named ones: `worker` = all its instances)."""
    result = sup.status()
    if args.get("names"):
        result["programs"] = [p.status() for p in sup.arbiter.graph.resolve(args["names"])]
    return result


async def pid(sup: Supervision, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """The supervisor's pid; with a name, that program's (`pids`: every instance's)."""
    if not args.get("name"):
        return {"pid": os.getpid()}
    targets = sup.arbiter.graph.resolve([args["name"]])
    return {"pid": targets[0].pid, "pids": {p.name: p.pid for p in targets}}


async def why(sup: Supervision, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """How the program's last run ended, with its evidence (`last_stop`, null if none yet)."""
    p = sup.arbiter.graph.resolve([args.get("name") or ""])[0]
    # what touched the current run (signals, denied commands; a late answer amends in place)
    return {"program": p.status(), "last_stop": p.last_stop, "recent_events": list(p.recent_events)}


async def reload(sup: Supervision, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """Re-read the config; apply only what changed (a broken config changes nothing)."""
    return await sup.reload(who("reload", peer))


async def shutdown(sup: Supervision, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """Stop everything in order and exit; the reply comes at once (`pid` to wait on)."""
    sup.audit("operator", action="shutdown", peer={"pid": peer.pid, "uid": peer.uid})
    sup.request_shutdown(who("shutdown", peer))
    return {"pid": os.getpid()}


async def cluster_status(sup: Supervision, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """Read-only: every node's published status from the cluster's Redis, read by this
    supervisor (`{redis, nodes}`, as `relayqctl status --cluster --json` shows it), within a
    short deadline; without [cluster], or with the cluster's Redis silent, an error (code 1)."""
    return await sup.cluster_status()


async def cluster_why(sup: Supervision, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """Read-only: what node `node` published of program `name` (`{node, program, last_stop}`,
    as `relayqctl why NAME --node N --json` shows it), read from the cluster's Redis by this
    supervisor as `cluster-status` is; an unknown node or program: code 4."""
    if not args.get("node") or not args.get("name"):
        raise BadRequest("cluster-why: give a node and a program name")
    return await sup.cluster_why(args["node"], args["name"])


def _operate(cmd: str) -> Handler:
    async def handler(sup: Supervision, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        arbiter = sup.arbiter
        # a stop stays possible: a shutdown may wait on a Redis whose final save failed
        if arbiter.shutting_down and cmd != "stop":
            raise ShuttingDown("the supervisor is shutting down")
        if not args.get("names"):
            raise BadRequest(f"{cmd}: name at least one program")
        targets = arbiter.graph.resolve(args["names"])
        if cmd == "stop" and args.get("with_dependents"):
            targets = arbiter.graph.with_dependents(targets)
        force = bool(args.get("force"))
        if force and cmd != "stop":
            raise BadRequest(f"{cmd}: --force is only for stop")
        sup.audit("operator", action=cmd, programs=[p.name for p in targets], peer={"pid": peer.pid, "uid": peer.uid},
                  **({"force": True} if force else {}))
        action = who(cmd + (" --force" if force else ""), peer)
        # a task of its own: the operation completes even if relayqctl goes away (--no-wait)
        job = start_task(operator.ACTIONS[cmd](arbiter, targets, action, force), f"relayqctl {cmd}")
        if not args.get("wait", True):
            return {"outcomes": [{"name": p.name, "state": p.state, "ok": True, "detail": "requested"}
                                 for p in targets]}
        outcomes = await job
        return {"outcomes": [o.to_dict() for o in outcomes]}
    handler.__doc__ = {
        "start": "Start programs and what they depend on (reviving FATAL ones); wait for the outcome.",
        "stop": "Stop programs (with_dependents: what needs them first); they stay stopped until started. "
                "force: SIGKILL now, without Redis' final save (the way out when that save fails).",
        "restart": "Stop, then start programs; wait for the outcome.",
    }[cmd]
    return handler


HANDLERS: dict[str, Handler] = {
    "status": status,
    "pid": pid,
    "why": why,
    "cluster-status": cluster_status,
    "cluster-why": cluster_why,
    "reload": reload,
    "shutdown": shutdown,
    "start": _operate("start"),
    "stop": _operate("stop"),
    "restart": _operate("restart"),
}
