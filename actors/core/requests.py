"""Asking the state keeper (or the supervisor) things: sync and asyncio clients over DEALER.

Frames: ``[b"", encoded Request]`` out and ``[b"", encoded Reply]`` back, so a REP socket
on the far side of the broker's ROUTER/DEALER proxy answers us. A request that gets no
reply in time is sent again with the same ``req_id`` (the keeper answers repeats from a
cache), until the overall deadline: a restarting keeper costs a delay, not an error.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import zmq
import zmq.asyncio

from .errors import Unavailable, error_from_code
from .protocol import ProtocolError, Reply, Request, decode_as, encode
from .security import secure_client
from .settings import REQUEST_TIMEOUT_S

RETRY_INTERVAL_S = 0.5


def _new_socket(context: zmq.Context, endpoint: str, keys_dir: str = "") -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure_client(sock, endpoint, keys_dir)
    sock.connect(endpoint)
    return sock


def _result_or_raise(reply: Reply) -> Any:
    if reply.ok:
        return reply.result
    raise error_from_code(reply.code, reply.error)


class RequestClient:
    """Blocking requests; one socket, one request at a time."""

    def __init__(self, context: zmq.Context, endpoint: str, keys_dir: str = "") -> None:
        self.context = context
        self.endpoint = endpoint
        self.keys_dir = keys_dir
        self.sock = _new_socket(context, endpoint, keys_dir)

    def request(self, op: str, timeout: float = REQUEST_TIMEOUT_S, **args: Any) -> Any:
        """Send op(args) and return its result; raise the narrow error, or Unavailable after timeout."""
        req = Request(op=str(getattr(op, "value", op)), args=args, req_id=uuid.uuid4().hex)
        frames = [b"", encode(req)]
        deadline = time.monotonic() + timeout
        while True:
            self.sock.send_multipart(frames)
            wait_until = min(deadline, time.monotonic() + RETRY_INTERVAL_S)
            while (remaining := wait_until - time.monotonic()) > 0:
                if not self.sock.poll(int(remaining * 1000) + 1):
                    continue
                reply = self._read()
                if reply is not None and reply.req_id == req.req_id:
                    return _result_or_raise(reply)
            if time.monotonic() >= deadline:
                # Lazy pirate: a fresh socket, so a late reply cannot be taken for the next one.
                self.sock.close(linger=0)
                self.sock = _new_socket(self.context, self.endpoint, self.keys_dir)
                raise Unavailable(f"no answer to {req.op} from {self.endpoint} within {timeout:.1f}s")

    def _read(self) -> Reply | None:
        frames = self.sock.recv_multipart()
        try:
            return decode_as(frames[-1], Reply)
        except ProtocolError:
            return None

    def close(self) -> None:
        self.sock.close(linger=0)


class AsyncRequestClient:
    """Concurrent requests from asyncio code; replies are matched by req_id."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str, keys_dir: str = "") -> None:
        self.sock = _new_socket(context, endpoint, keys_dir)
        self.endpoint = endpoint
        self.pending: dict[str, asyncio.Future] = {}
        self.reader: asyncio.Task | None = None
        self.dropped = 0

    def start(self) -> None:
        self.reader = asyncio.get_running_loop().create_task(self._read_replies())

    async def _read_replies(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            try:
                reply = decode_as(frames[-1], Reply)
            except ProtocolError:
                self.dropped += 1
                continue
            future = self.pending.get(reply.req_id)
            if future is not None and not future.done():
                future.set_result(reply)

    async def request(self, op: str, timeout: float = REQUEST_TIMEOUT_S, **args: Any) -> Any:
        """Send op(args), retrying until timeout; return the result or raise."""
        if self.reader is None:
            self.start()
        req = Request(op=str(getattr(op, "value", op)), args=args, req_id=uuid.uuid4().hex)
        frames = [b"", encode(req)]
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending[req.req_id] = future
        deadline = time.monotonic() + timeout
        try:
            while True:
                await self.sock.send_multipart(frames)
                wait = min(RETRY_INTERVAL_S, deadline - time.monotonic())
                try:
                    reply = await asyncio.wait_for(asyncio.shield(future), max(wait, 0.001))
                    return _result_or_raise(reply)
                except asyncio.TimeoutError:
                    if time.monotonic() >= deadline:
                        raise Unavailable(f"no answer to {req.op} from {self.endpoint} within {timeout:.1f}s") from None
        finally:
            self.pending.pop(req.req_id, None)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        self.sock.close(linger=0)
