"""The gateway's data socket, read side: routers' heartbeats and acks, and text commands from launch.py ctl / the UI.

``DataLink`` is given the data socket, the data plane (which routers live, what they acked), the gateway's
counters and a way to run command lines; a bus command is answered on the same socket without ever blocking.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import zmq
import zmq.asyncio

from ..core.bus import beat_expiry
from ..core.errors import ErrorCode
from ..core.security import secure_server
from ..core.settings import Endpoints
from ..core.protocol import DataAck, Heartbeat, Op, ProtocolError, Request, decode, encode
from ..core.protocol import Reply as BusReply
from .text.registry import Peer
from .dataplane import DataPlane

log = logging.getLogger(__name__)

DATA_HWM = 100_000
BUS_COMMAND_HOST = "127.0.0.1"  # who a bus command (launch.py ctl, the UI) is from when its transport has no address

RunLines = Callable[[str, Peer], Awaitable[tuple[str, bool]]]


def bind_data_socket(actx: zmq.asyncio.Context, endpoints: Endpoints) -> zmq.asyncio.Socket:
    """The ROUTER the routers connect to (and command clients): never blocks, a restarted router takes over."""
    sock = actx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted router takes its name over at once
    sock.setsockopt(zmq.SNDHWM, DATA_HWM)
    sock.setsockopt(zmq.RCVHWM, DATA_HWM)
    secure_server(sock, endpoints.data, endpoints.keys_dir)
    sock.bind(endpoints.data)
    log.info("gateway data plane bound on %s", endpoints.data)
    return sock


class DataLink:
    """Routers' messages to the data plane; commands over the bus run as admin (whoever reaches the socket owns it)."""

    def __init__(self, sock: zmq.asyncio.Socket, plane: DataPlane, counters: dict[str, int],
                 run_lines: RunLines) -> None:
        self.sock = sock
        self.plane = plane
        self.counters = counters
        self.run_lines = run_lines
        self.commands: set[asyncio.Task] = set()  # commands being answered

    async def read(self) -> None:
        """The data socket's reader: [identity, body] from a router, [identity, b"", Request] from a command client."""
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            if len(frames) != 2:
                if len(frames) == 3 and not frames[1].bytes:  # a command client, never a router
                    self._command(frames[0].bytes, frames[2])
                else:
                    self.counters["malformed_messages"] += 1
                continue
            identity, body = frames[0].bytes, frames[1].bytes
            try:
                message = decode(body)
            except ProtocolError:
                self.counters["malformed_messages"] += 1
                continue
            if isinstance(message, Heartbeat):
                fd = frames[1].get(zmq.SRCFD)
                if self.plane.heard(identity, message.pid, message.host, fd, beat_expiry(message)):
                    log.info("router %s (pid %d) joined the data plane", identity.decode(errors="replace"), message.pid)
            elif isinstance(message, DataAck):
                self.plane.alive(identity)
                self.plane.ack(message.source, message.seq, message.epoch)
            else:
                self.counters["malformed_messages"] += 1

    def _command(self, identity: bytes, frame: zmq.Frame) -> None:
        """Whoever reaches our bus socket is the owner (0700 run folder, or CurveZMQ keys): commands run as admin."""
        try:
            request = decode(frame.bytes)
        except ProtocolError:
            request = None
        if not isinstance(request, Request):
            self.counters["malformed_messages"] += 1
            return
        if request.op != Op.COMMAND.value or not isinstance(request.args.get("line"), str):
            self.counters["malformed_messages"] += 1
            self._reply(identity, BusReply(ok=False, error=f"expected op {Op.COMMAND.value!r} with a text 'line'",
                                           code=int(ErrorCode.BAD_ARGUMENTS), req_id=request.req_id))
            return
        try:
            host = frame.get("Peer-Address") or BUS_COMMAND_HOST
        except zmq.ZMQError:
            host = BUS_COMMAND_HOST
        task = asyncio.create_task(self._answer(identity, request, Peer(host, 0, admin=True)))
        self.commands.add(task)
        task.add_done_callback(self.commands.discard)

    async def _answer(self, identity: bytes, request: Request, peer: Peer) -> None:
        text, failed = await self.run_lines(request.args["line"], peer)
        self._reply(identity, BusReply(ok=True, result={"text": text, "failed": failed}, req_id=request.req_id))

    def _reply(self, identity: bytes, reply: BusReply) -> None:
        """Answer a command client without ever blocking; one that left is simply gone."""
        future = self.sock.send_multipart([identity, b"", encode(reply)], flags=zmq.NOBLOCK)
        if future.exception() is not None:
            log.debug("a command client left before its reply: %s", future.exception())
