"""The message schema: round trips, and garbage is a ProtocolError (a counted drop), never a crash."""
import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from actors.core.protocol import (SCHEMA_VERSION, Activity, DataAck, DataBatch, Heartbeat, ProtocolError, Reply, Request, StateUpdate,
                             decode, decode_as, encode)

EXAMPLES = [
    Request(op="register", args={"name": "LLM", "uuid": "u", "port": 1}, req_id="r1"),
    Reply(ok=False, error="nope", code=4, req_id="r1"),
    StateUpdate(epoch="e", seq=3, kind="route", key="r", value=None),
    Heartbeat(actor="router-1", pid=12, host="h", started_at=1.5, stats={"delivered": 3}),
    Activity(actor="state", level="INFO", text="hello", ts=2.0),
    DataBatch(source="u", seq=1, payloads=[b"a", b"b c"], received_at=1.0),
    DataAck(source="u", seq=2),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(message):
    assert decode(encode(message)) == message


def test_encoded_message_is_a_map_with_type_and_version():
    body = msgpack.unpackb(encode(DataAck(source="u", seq=1)))
    assert body["type"] == "data_ack" and body["v"] == SCHEMA_VERSION


@pytest.mark.parametrize("garbage", [b"", b"\xc1", b"\x93\x01\x02\x03", msgpack.packb({"type": "nope", "v": 1}),
                                     msgpack.packb({"type": "data_ack", "v": 99, "source": "u", "seq": 1}),
                                     msgpack.packb({"type": "data_ack", "v": 1, "source": "u"}),
                                     msgpack.packb({"type": "data_ack", "v": 1, "source": 5, "seq": 1}),
                                     msgpack.packb({"type": "data_ack", "v": 1, "source": "u", "seq": True})])
def test_malformed_input_raises_protocol_error(garbage):
    with pytest.raises(ProtocolError):
        decode(garbage)


def test_decode_as_rejects_the_wrong_class():
    with pytest.raises(ProtocolError):
        decode_as(encode(DataAck(source="u", seq=1)), Reply)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_protocol_error(data):
    try:
        decode(data)
    except ProtocolError:
        pass
