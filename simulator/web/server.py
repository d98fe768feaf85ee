"""``unionterm-sim ui``: the workbench served on localhost with aiohttp.

One asyncio process holds everything: pcscd and mosquitto as child
processes, the production terminal as tasks, and this small server. The page
is static files (no build step); it opens one WebSocket and receives the
whole state once, then only the parts that changed, pushed at most 20 times
a second. Clicks are JSON POSTs to ``/api/<action>``.

The server listens on 127.0.0.1 only, and refuses requests whose Host (or
Origin) is not this loopback address, so a web page elsewhere cannot drive
the workbench through the person's browser (DNS rebinding, cross-site POST).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from terminal import eventloop
from terminal.exceptions import UniontermError

from ..services import Mosquitto
from .benchrig import WorkbenchRig
from .wire import changes
from .workbench import Workbench

log = logging.getLogger("unionterm.sim.web")

STATIC = Path(__file__).with_name("static")
PUSH_INTERVAL_S = 0.05
HOST = "127.0.0.1"

Action = Callable[[Workbench, dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]]

#: POST /api/<name> -> what it does with the JSON body.
ACTIONS: dict[str, Action] = {
    "tap": lambda b, body: b.tap(str(body.get("card", ""))),
    "place": lambda b, body: b.place(str(body.get("card", ""))),
    "lift": lambda b, body: b.lift(),
    "scan": lambda b, body: b.scan(str(body.get("card", ""))),
    "door": lambda b, body: b.set_door(bool(body.get("open"))),
    "exit": lambda b, body: b.press_exit(),
    "broker": lambda b, body: b.set_broker(bool(body.get("up"))),
    "block": lambda b, body: b.block(str(body.get("card", "")), bool(body.get("blocked", True))),
    "mode": lambda b, body: b.switch_mode(str(body.get("mode", ""))),
    "delta": lambda b, body: b.publish_delta(str(body.get("member", "")), str(body.get("status", ""))),
    "key": lambda b, body: b.key(str(body.get("key", ""))),
    "ecr-sale": lambda b, body: b.ecr_sale(str(body.get("amount", ""))),
    "ecr-status": lambda b, body: b.ecr_status(),
}


class Hub:
    """The open WebSockets, and the one loop that pushes state changes to all of them."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self.sockets: set[web.WebSocketResponse] = set()
        self.sent: dict[str, Any] = {}

    async def run(self) -> None:
        while True:
            try:
                now = await self.bench.poll()
            except Exception:  # noqa: BLE001 - a bad reading must not stop the page's updates
                log.exception("event=web_poll_failed")
                await asyncio.sleep(1.0)
                continue
            patch = changes(self.sent, now)
            if patch:
                self.sent = now
                await self.broadcast({"type": "patch", "state": patch})
            await asyncio.sleep(PUSH_INTERVAL_S)

    async def broadcast(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, ensure_ascii=False)
        for ws in list(self.sockets):
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                self.sockets.discard(ws)


HUB = web.AppKey("hub", Hub)


def _loopback_only(port_of: Callable[[], int]) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        allowed = {f"{HOST}:{port_of()}", f"localhost:{port_of()}"}
        origin = request.headers.get("Origin")
        if request.host not in allowed or (origin is not None and origin.removeprefix("http://") not in allowed):
            log.warning("event=web_refused host=%r origin=%r", request.host, origin)
            raise web.HTTPForbidden(text="the workbench answers on its loopback address only")
        return await handler(request)

    return check


def build_app(bench: Workbench, port_of: Callable[[], int]) -> web.Application:
    """The aiohttp application; ``port_of`` gives the bound port (known once listening)."""
    app = web.Application(middlewares=[_loopback_only(port_of)])
    hub = Hub(bench)
    app[HUB] = hub

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "state", "state": hub.sent or await bench.poll()},
                                     ensure_ascii=False))
        hub.sockets.add(ws)
        try:
            async for msg in ws:  # the page only listens; anything it sends is ignored
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            hub.sockets.discard(ws)
        return ws

    async def action(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        act = ACTIONS.get(name)
        if act is None:
            raise web.HTTPNotFound(text=f"no action {name!r}")
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return web.json_response({"ok": False, "error": "body is not JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"ok": False, "error": "body must be a JSON object"}, status=400)
        try:
            result = act(bench, body)
            if asyncio.iscoroutine(result):
                result = await result
        except (UniontermError, ValueError) as exc:  # ActionRefused, PayloadError: said to the person
            return web.json_response({"ok": False, "error": str(exc)}, status=409)
        log.info("event=web_action name=%s", name)
        return web.json_response({"ok": True, **result})

    async def pusher(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(hub.run(), name="web-push")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close_sockets(app: web.Application) -> None:
        # On shutdown, before the server waits for open handlers: an open page would hold it for a minute.
        for ws in list(hub.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"workbench stopping")

    app.router.add_get("/", index)
    app.router.add_get("/ws", socket)
    app.router.add_post("/api/{name}", action)
    app.router.add_static("/static", STATIC)
    app.cleanup_ctx.append(pusher)
    app.on_shutdown.append(close_sockets)
    return app


@contextlib.asynccontextmanager
async def serve(bench: Workbench, port: int = 0) -> AsyncIterator[str]:
    """Serve ``bench`` on 127.0.0.1:``port`` (0: any free port); yields the page's URL."""
    bound = {"port": port}
    runner = web.AppRunner(build_app(bench, lambda: bound["port"]), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, port)
        await site.start()
        bound["port"] = runner.addresses[0][1]
        yield f"http://{HOST}:{bound['port']}/"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def workbench(rig: WorkbenchRig, port: int = 0) -> AsyncIterator[tuple[Workbench, str]]:
    """A workbench on a running ``rig``, served; yields it and the page's URL."""
    async with Workbench.running(rig) as bench, serve(bench, port) as url:
        yield bench, url


async def run_ui(port: int, mode: str, workdir: Path | None = None) -> int:
    """The whole workbench until Ctrl-C or SIGTERM: services, terminal, feed, back office, page."""
    scratch = workdir is None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="unionterm-ui-"))
        os.chmod(workdir, 0o755)  # mosquitto, running as its own user, saves its sessions in here
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    broker = Mosquitto(workdir=workdir / "mosquitto", persistent=True)
    await asyncio.to_thread(broker.start)
    try:
        async with WorkbenchRig(workdir / "rig", mode=mode, broker=broker, capture=False) as rig, \
                workbench(rig, port) as (_bench, url):
            print(f"unionterm workbench: {url}  (mode {mode}, terminal {rig.config.terminal.id}, "
                  f"mosquitto 127.0.0.1:{broker.port}, state in {workdir}"
                  f"{', removed at exit' if scratch else ''}); Ctrl-C stops", flush=True)
            await stop.wait()
    finally:
        await asyncio.to_thread(broker.stop)
        if scratch:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(port: int, mode: str, workdir: str | None = None) -> int:
    return eventloop.run(run_ui(port, mode, Path(workdir) if workdir else None))
