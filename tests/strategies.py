"""Hypothesis strategies for hostile input: anything msgpack carries, messages of random field types, serial pieces."""

from __future__ import annotations

import dataclasses
import struct

from hypothesis import strategies as st

from robot_app.common.transition_chunk import ARRAY_DTYPES
from robot_app.hardware.protocol import MAX_PAYLOAD, SYNC, Command
from robot_app.hardware.protocol import Frame as SerialFrame
from robot_app.hardware.protocol import MessageType, ProtocolError, SensorFrame, encode_frame, parse
from robot_app.transport.messages import KINDS

# Anything msgpack can carry, for fields that expect one thing.
ANYTHING = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=12)
    | st.binary(max_size=48),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def bodies(kind):
    """A body with the kind's own field names, each holding anything."""
    if isinstance(kind, str) and kind in KINDS:
        return st.fixed_dictionaries({f.name: ANYTHING for f in dataclasses.fields(KINDS[kind])})
    return ANYTHING


def array_records():
    """Column records of random dtypes, shapes and buffers, now and then the right ones."""
    return st.fixed_dictionaries({
        "dtype": st.sampled_from(sorted(ARRAY_DTYPES)) | ANYTHING,
        "shape": st.lists(st.integers(-3, 2**40), max_size=3) | ANYTHING,
        "data": st.binary(max_size=64) | ANYTHING,
    })


# ---- serial pieces: (what a receiver must make of it, the bytes) -----------------------------------------------------

HOSTILE_VOLTS = (st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e6, -1e6, 15.0, -5.0001])
                 | st.floats(width=32))


def _malformed(message_type: int, payload: bytes) -> tuple[str, bytes]:
    """A frame with a valid CRC: 'malformed' if its payload does not parse as its type says, else 'valid'."""
    try:
        parse(SerialFrame(message_type, 1, payload))
    except ProtocolError:
        return "malformed", encode_frame(message_type, 1, payload)
    return "valid", encode_frame(message_type, 1, payload)


def _flip(frame: bytes, bit: int) -> bytes:
    data = bytearray(frame)
    bit = 16 + bit % (8 * len(data) - 16)  # never in the sync bytes: a frame that starts and fails its CRC
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def serial_pieces(known_types: list[int]):
    """Bad serial input of every kind the decoder and the parser must survive, and count."""
    return st.one_of(
        st.binary(min_size=1, max_size=40).map(lambda b: ("garbage", b.replace(SYNC[:1], b"\x00"))),
        st.tuples(st.integers(7, 255) | st.just(0), st.binary(max_size=40)).map(
            lambda t: ("unknown_type", encode_frame(t[0], 7, t[1]))),
        st.tuples(st.sampled_from(known_types), st.binary(max_size=24)).map(lambda t: _malformed(*t)),
        st.tuples(st.sampled_from(known_types), st.binary(max_size=24), st.integers(0, 1 << 20)).map(
            lambda t: ("corrupt", _flip(encode_frame(t[0], 3, t[1]), t[2]))),
        st.integers(20, MAX_PAYLOAD).map(
            lambda n: ("truncated", SYNC + struct.pack("<HBI", n, int(MessageType.COMMAND), 9))),
    )


def hostile_commands():
    """Valid COMMAND frames the firmware must not obey blindly: out of limits, non-finite, the wrong size."""
    return st.one_of(
        HOSTILE_VOLTS.map(lambda v: ("command", encode_frame(MessageType.COMMAND, 5, Command(True, (v,)).pack()))),
        st.lists(st.floats(-5, 5, width=32), min_size=0, max_size=3).filter(lambda v: len(v) != 1).map(
            lambda v: ("wrong_size", encode_frame(MessageType.COMMAND, 6, Command(True, tuple(v)).pack()))),
    )


def hostile_sensor_frames():
    """Valid SENSOR frames a host must drop (the wrong shape), or may take but must survive (any values at all)."""
    counts = st.integers(-2**31, 2**31 - 1)
    return st.one_of(
        st.lists(counts, max_size=4).filter(lambda c: len(c) != 2).map(lambda c: ("wrong_shape", SensorFrame(
            1, 0, 0, tuple(c), (0.0,)).pack())),
        st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 0xFFFF), counts, counts, HOSTILE_VOLTS).map(
            lambda t: ("any_values", SensorFrame(t[0], t[1], 0, (t[2], t[3]), (t[4],)).pack())),
    )
