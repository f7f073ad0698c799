"""The bus: an event proxy (XSUB in, XPUB out) and a request proxy (ROUTER front, DEALER back) to the state keeper.

It holds no state of its own, so killing it costs only the messages in flight: publishers
and clients reconnect by themselves, and state replicas resync from the keeper on a gap.
The data plane (gateway -> routers) never passes through here.
"""
from __future__ import annotations

import logging
import struct
import time

import zmq

from actors.core.bus import BusPresence
from actors.core.runner import StopFlag, run_actor
from actors.core.security import secure_server, start_authenticator
from actors.core.settings import Runtime

log = logging.getLogger("broker")

BUS_HWM = 100_000
REFUSAL_LOG_INTERVAL_S = 60.0


class Broker:
    """Binds the four bus sockets and shuttles frames between the pairs."""

    def __init__(self, runtime: Runtime, context: zmq.Context, stop: StopFlag, name: str = "broker") -> None:
        self.runtime = runtime
        self.context = context
        self.stop = stop
        self.name = name
        self.forwarded = {"events": 0, "requests": 0, "replies": 0}
        self.refused = 0
        self.last_refusal_log: dict[str, float] = {}

    def _bind(self, kind: int, endpoint: str) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, BUS_HWM)
        sock.setsockopt(zmq.RCVHWM, BUS_HWM)
        secure_server(sock, endpoint, self.runtime.endpoints.keys_dir)
        sock.bind(endpoint)
        log.info("bound %s", endpoint)
        return sock

    def run(self) -> None:
        endpoints = self.runtime.endpoints
        auth = start_authenticator(self.context, endpoints.bound_by_broker, endpoints.keys_dir)
        sockets = [
            self._bind(zmq.XSUB, endpoints.events_in),
            self._bind(zmq.XPUB, endpoints.events_out),
            self._bind(zmq.ROUTER, endpoints.state_front),
            self._bind(zmq.DEALER, endpoints.state_back),
        ]
        events_in, events_out, front, back = sockets
        # beat_on_change off: its counters move with every beat it forwards
        presence = BusPresence(self.context, endpoints, self.name, beat_on_change=False)
        heart = presence.heart
        poller = zmq.Poller()
        for sock in sockets:
            poller.register(sock, zmq.POLLIN)
        pairs = {events_in: (events_out, "events"), events_out: (events_in, None), front: (back, "requests"),
                 back: (front, "replies")}
        monitors = self._watch_handshakes(sockets) if auth is not None else {}
        for monitor in monitors:
            poller.register(monitor, zmq.POLLIN)
        wakeup = self.stop.wakeup_fd()
        poller.register(wakeup, zmq.POLLIN)
        log.info("broker running")
        try:
            while not self.stop.should_stop():
                # Asleep until a frame arrives or the next beat is due: nothing else is timed here.
                for sock, _ in poller.poll(heart.due_in() * 1000 + 1):
                    if sock == wakeup:
                        continue
                    if sock in monitors:
                        self._report_refusal(sock, monitors[sock])
                        continue
                    target, counter = pairs[sock]
                    self._shuttle(sock, target, counter)
                heart.maybe_beat({**self.forwarded, "refused_handshakes": self.refused})
        finally:
            presence.close()
            for monitor in monitors:
                monitor.close()
            for sock in sockets:
                sock.close()
            if auth is not None:
                auth.stop()
            log.info("broker stopped")

    def _watch_handshakes(self, sockets: list[zmq.Socket]) -> dict[zmq.Socket, str]:
        """Monitor sockets that report failed CURVE handshakes (ZAP only logs them at debug level)."""
        events = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        return {sock.get_monitor_socket(events): sock.getsockopt_string(zmq.LAST_ENDPOINT) for sock in sockets}

    def _report_refusal(self, monitor: zmq.Socket, endpoint: str) -> None:
        """One warning per endpoint per REFUSAL_LOG_INTERVAL_S: a satellite with wrong keys, or a stranger."""
        try:
            frames = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        # Frame 1 is (uint16 event, int32 value), parsed here: zmq.utils.monitor would pull asyncio into the broker
        # (docs/architecture.md, "What imports cost").
        event = struct.unpack("=Hi", frames[0][:6])[0] if frames and len(frames[0]) >= 6 else None
        self.refused += 1
        now = time.monotonic()
        if now - self.last_refusal_log.get(endpoint, -REFUSAL_LOG_INTERVAL_S) >= REFUSAL_LOG_INTERVAL_S:
            self.last_refusal_log[endpoint] = now
            log.warning("refused a bus connection on %s (CurveZMQ handshake failed, event %s): "
                        "a satellite with the wrong keys?", endpoint, event)

    def _shuttle(self, source: zmq.Socket, target: zmq.Socket, counter: str | None) -> None:
        """Move every waiting message from source to target (bounded, so no pair starves the others)."""
        for _ in range(1000):
            try:
                frames = source.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                target.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                continue  # a full peer queue drops, like PUB does; requests are retried by clients
            except zmq.ZMQError as exc:
                log.warning("could not forward a message: %s", exc)
                continue
            if counter:
                self.forwarded[counter] += 1


def main(argv: list[str] | None = None) -> int:
    return run_actor("broker", Broker, argv)


if __name__ == "__main__":
    raise SystemExit(main())
