"""Every message that crosses a process boundary, and the one encode/decode pair.

Wire layout: one msgpack map per message, ``{"type": <MessageType>, "v": SCHEMA_VERSION, <fields>}``.
On the event bus a message travels as two frames, ``[topic, encoded]``, so subscribers
filter by topic without decoding. ``decode`` raises ``ProtocolError`` for anything that is
not a well-formed message of a known type and version; callers count and drop it.
"""
from __future__ import annotations

import dataclasses
import time
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import msgpack

SCHEMA_VERSION = 1


class ProtocolError(ValueError):
    """Bytes that are not a valid message of this schema."""


class MessageType(str, Enum):
    REQUEST = "request"
    REPLY = "reply"
    STATE_UPDATE = "state_update"
    HEARTBEAT = "heartbeat"
    ACTIVITY = "activity"
    DATA = "data"
    DATA_ACK = "data_ack"
    TAP = "tap"
    TRACE = "trace"


class Topic(bytes, Enum):
    """Event bus topics (first frame of every published message)."""

    STATE = b"state"
    ACTIVITY = b"activity"
    HEARTBEAT = b"heartbeat"
    # The state keeper's heartbeat (it carries epoch/seq): under "state" so every replica gets it without
    # subscribing to all heartbeats; whoever watches liveness subscribes to both.
    KEEPER_HEARTBEAT = b"state\x00heartbeat"
    TAP = b"tap\x00"  # prefix of every tap topic; see tap_topic()
    # Latency breakdown: routers trace sampled batches only while someone subscribes here (bench/latency_bench.py).
    TRACE = b"trace\x00"


TAP_ROUTE = "route"
TAP_PERIPHERAL = "peripheral"


def tap_topic(kind: str, name: str) -> bytes:
    """The topic a router publishes a route's (kind "route", by name) or a source peripheral's
    (kind "peripheral", by uuid) live payloads on; NUL-terminated so "r1" never matches "r10"."""
    return Topic.TAP.value + kind.encode() + b"\x00" + name.encode() + b"\x00"


# The gateway heartbeat's list of known peripherals that sent data since its previous beat (the scanner's liveness).
SOURCES_SEEN_STAT = "sources_seen"


class Op(str, Enum):
    """Requests understood by the state keeper (and ``CONTROL_*`` by the supervisor)."""

    SNAPSHOT = "snapshot"
    REGISTER = "register"
    SEEN = "seen"
    # the scanner: these peripherals sent data (the gateway's heartbeat said so); no port or config changes
    ALIVE = "alive"
    LOST = "lost"
    SET_PERIPHERAL_CONFIG = "set_peripheral_config"
    SET_DELIVERY = "set_delivery"
    REMOVE_PERIPHERAL = "remove_peripheral"
    ADD_ROUTE = "add_route"
    EDIT_ROUTE = "edit_route"
    REMOVE_ROUTE = "remove_route"
    SET_ROUTE_RULE = "set_route_rule"
    ROUTE_USAGE = "route_usage"
    SET_CONFIG = "set_config"
    RESET = "reset"
    CONTROL_STATUS = "control_status"
    CONTROL_STOP = "control_stop"
    CONTROL_SCALE = "control_scale"
    CONTROL_ACTIVITY = "control_activity"
    # every live actor's last heartbeat (encoded), for the gateway's /status: it does not subscribe to them all
    CONTROL_BEATS = "control_beats"
    # launched peripherals: list, start, stop, restart, send, tail (peripherals.py)
    CONTROL_PERIPHERAL = "control_peripheral"
    # to the gateway over its bus socket: run command lines as the local owner (launch.py ctl, the UI)
    COMMAND = "command"


class UpdateKind(str, Enum):
    """What a state update replaces: one peripheral, one route, the config, or everything."""

    PERIPHERAL = "peripheral"
    ROUTE = "route"
    CONFIG = "config"
    RESET = "reset"


@dataclass
class Message:
    TYPE: ClassVar[MessageType]


@dataclass
class Request(Message):
    """A request to the state keeper or the supervisor; ``req_id`` makes retries idempotent."""

    TYPE: ClassVar[MessageType] = MessageType.REQUEST
    op: str
    args: dict = field(default_factory=dict)
    req_id: str = ""


@dataclass
class Reply(Message):
    """``ok`` with a ``result``, or an error ``code`` (see ``errors.py``) with a readable ``error``."""

    TYPE: ClassVar[MessageType] = MessageType.REPLY
    ok: bool
    result: Any = None
    error: str = ""
    code: int = 0
    req_id: str = ""


@dataclass
class StateUpdate(Message):
    """One numbered change (Clone pattern); ``value`` None deletes ``key``; ``epoch`` changes on a keeper restart."""

    TYPE: ClassVar[MessageType] = MessageType.STATE_UPDATE
    epoch: str
    seq: int
    kind: str
    key: str = ""
    value: Any = None


@dataclass
class Heartbeat(Message):
    """Sent by every actor each HEARTBEAT_INTERVAL_S; the state keeper's carries its epoch/seq."""

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT
    actor: str
    pid: int
    host: str
    started_at: float
    stats: dict = field(default_factory=dict)
    # silent this long = gone (it beats at least twice within); 0: HEARTBEAT_EXPIRY_S (older senders)
    expiry_s: float = 0.0


@dataclass
class Activity(Message):
    """A line for the activity feed (the UI's "Recent Activity")."""

    TYPE: ClassVar[MessageType] = MessageType.ACTIVITY
    actor: str
    level: str
    text: str
    ts: float = field(default_factory=time.time)


@dataclass
class DataBatch(Message):
    """Payloads from one source, in order; ``seq`` numbers the first one (per source, from the gateway)."""

    TYPE: ClassVar[MessageType] = MessageType.DATA
    source: str
    seq: int
    payloads: list
    received_at: float = 0.0
    epoch: str = ""  # the gateway process that numbered it: seqs restart with a new gateway


@dataclass
class DataAck(Message):
    """A router confirms every payload of ``source`` up to and including ``seq``, as numbered by gateway ``epoch``."""

    TYPE: ClassVar[MessageType] = MessageType.DATA_ACK
    source: str
    seq: int
    epoch: str = ""


@dataclass
class Tap(Message):
    """Live payloads for a watcher (/tap): published by a router only while someone subscribes to the tap topic."""

    TYPE: ClassVar[MessageType] = MessageType.TAP
    kind: str  # TAP_ROUTE or TAP_PERIPHERAL
    name: str  # route name, or the source peripheral's uuid
    source: str
    seq: int
    payloads: list
    ts: float = 0.0


@dataclass
class Trace(Message):
    """One sampled payload's way through a router, for the latency breakdown (on Topic.TRACE only while watched):

    [first payload's head, sent by the gateway, received by the router, handed to the sink, written] (wall-clock s).
    """

    TYPE: ClassVar[MessageType] = MessageType.TRACE
    actor: str
    stages: list


MESSAGE_CLASSES: tuple[type[Message], ...] = (Request, Reply, StateUpdate, Heartbeat, Activity, DataBatch, DataAck,
                                              Tap, Trace)

_PY_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,), int: (int,), float: (int, float), bool: (bool,), bytes: (bytes,),
    dict: (dict,), list: (list,), Any: (object,),
}


def _field_specs(cls: type[Message]) -> tuple[tuple[str, tuple[type, ...], bool], ...]:
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        specs.append((f.name, _PY_TYPES[hints[f.name]], required))
    return tuple(specs)


_REGISTRY: dict[str, tuple[type[Message], tuple[tuple[str, tuple[type, ...], bool], ...]]] = {
    cls.TYPE.value: (cls, _field_specs(cls)) for cls in MESSAGE_CLASSES
}


def encode(message: Message) -> bytes:
    """Serialise a message to msgpack bytes."""
    _, specs = _REGISTRY[message.TYPE.value]
    body: dict[str, Any] = {"type": message.TYPE.value, "v": SCHEMA_VERSION}
    for name, _, _ in specs:
        body[name] = getattr(message, name)
    return msgpack.packb(body, use_bin_type=True)


def decode(data: bytes) -> Message:
    """Parse msgpack bytes into a message; raise ProtocolError on anything malformed."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise ProtocolError(f"not msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"message must be a map, got {type(body).__name__}")
    if body.get("v") != SCHEMA_VERSION:
        raise ProtocolError(f"unsupported schema version {body.get('v')!r}")
    entry = _REGISTRY.get(body.get("type")) if isinstance(body.get("type"), str) else None
    if entry is None:
        raise ProtocolError(f"unknown message type {body.get('type')!r}")
    cls, specs = entry
    kwargs = {}
    for name, kinds, required in specs:
        if name not in body:
            if required:
                raise ProtocolError(f"{cls.__name__} lacks field {name!r}")
            continue
        value = body[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds and object not in kinds):
            raise ProtocolError(f"{cls.__name__}.{name} has wrong type {type(value).__name__}")
        kwargs[name] = value
    return cls(**kwargs)


def decode_as(data: bytes, cls: type[Message]) -> Any:
    """Decode and insist on one message class."""
    message = decode(data)
    if not isinstance(message, cls):
        raise ProtocolError(f"expected {cls.__name__}, got {type(message).__name__}")
    return message
