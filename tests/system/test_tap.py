"""/tap: watching the live payloads of a route or a peripheral from a command connection."""
import socket
import time
import uuid as uuidlib

from tests.support.instances import wait_until
from tests.support.fakes import LineSink, register, send_and_close


TAP_TIMEOUT_S = 10.0  # the router reports its taps in its heartbeat (every few seconds when idle)


def tap_subscriptions(instance):
    """Tap topics the routers publish: a subscription travels gateway -> broker -> router asynchronously."""
    routers = [c for c in instance.status()["children"] if c["name"].startswith("router")]
    return sum((c.get("stats") or {}).get("taps", 0) for c in routers)


def open_tap(instance, target):
    sock = socket.create_connection(("127.0.0.1", instance.command_port), timeout=5)
    sock.sendall(f"/tap {target}\n".encode())
    header = b""
    while not header.endswith(b"\n"):
        header += sock.recv(1)
    return sock, header.decode()


def read_lines(sock, count, timeout=5.0):
    sock.settimeout(0.2)
    data, deadline = b"", time.monotonic() + timeout
    while data.count(b"\n") < count and time.monotonic() < deadline:
        try:
            data += sock.recv(65536)
        except socket.timeout:
            continue
    return data.decode().splitlines()


def test_tap_shows_live_payloads_of_a_route_and_of_a_peripheral(orchestrator):
    with LineSink() as sink:
        source, target = str(uuidlib.uuid4()), str(uuidlib.uuid4())
        register(orchestrator.command_port, "Talker", source, 1)
        register(orchestrator.command_port, "Listener", target, sink.port)
        assert "added" in orchestrator.command("/routes add chat Talker Listener")
        route_tap, header = open_tap(orchestrator, "chat")
        peripheral_tap, _ = open_tap(orchestrator, "Talker")
        assert "Tapping route 'chat'" in header
        wait_until(lambda: tap_subscriptions(orchestrator) >= 2, TAP_TIMEOUT_S, 0.1, "both taps to reach the router")
        for i in range(5):
            send_and_close(orchestrator.command_port, f"/data {source} hello {i}\n".encode())
        assert read_lines(route_tap, 5) == [f"hello {i}" for i in range(5)]
        assert read_lines(peripheral_tap, 5) == [f"hello {i}" for i in range(5)]
        route_tap.close()
        peripheral_tap.close()
        wait_until(lambda: sink.count() >= 5, 5, message="delivery to the sink")
        assert "Known peripherals" in orchestrator.command("/list")


def test_tap_of_an_unknown_name_is_an_error(orchestrator):
    assert "no route or peripheral" in orchestrator.command("/tap nothing")
