"""io_uring's SEND to many sockets at once (`gateway.protocol.send_ring`), on real socket pairs."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from gateway.protocol.send_ring import BUFFER_BYTES, SendRing

ENTRIES = 8  # a small ring, so that a few dozen sockets take several calls and wrap around its end


@pytest.fixture
def ring() -> Iterator[SendRing]:
    try:
        ring = SendRing.open(ENTRIES)
    except OSError as exc:
        pytest.skip(f"io_uring is not available here: {exc}")
    yield ring
    ring.close()


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    pairs = [socket.socketpair() for _ in range(3 * ENTRIES + 5)]
    for sender, receiver in pairs:
        sender.setblocking(False)
        receiver.settimeout(5)
    yield pairs
    for sender, receiver in pairs:
        sender.close()
        receiver.close()


def descriptors(pairs: list[tuple[socket.socket, socket.socket]]) -> list[int]:
    return [sender.fileno() for sender, _ in pairs]


def receive(receiver: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += receiver.recv(size - len(data))
    return data


def test_every_socket_gets_the_bytes_once_in_order(
    ring: SendRing, pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    """Calls of every length, so that each lands somewhere else on the rings and some wrap around their ends."""
    for round_ in range(2 * ENTRIES + 3):
        data = os.urandom(1 + round_ * 37)
        assert ring.send(descriptors(pairs[: len(pairs) - round_ % 5]), data) is None
        for _, receiver in pairs[: len(pairs) - round_ % 5]:
            assert receive(receiver, len(data)) == data
    assert not ring.closed


def test_calls_that_change_length_source_and_sockets_leave_nothing_stale(
    ring: SendRing, pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    """The entries keep what the last call wrote; each call must still send exactly its own bytes."""
    sizes = [10, BUFFER_BYTES + 10, 20, 20, BUFFER_BYTES + 3, 5]  # from the ring's buffer, then from the bytes' own
    for number, size in enumerate(sizes):
        chosen = pairs[number % 3 :: 2]  # another set of sockets each time, in other entries
        data = os.urandom(size)
        written = ring.send(descriptors(chosen), data) or [size] * len(chosen)
        for (_, receiver), count in zip(chosen, written, strict=True):
            assert 0 < count <= size
            assert receive(receiver, count) == data[:count]


def test_a_full_socket_counts_what_it_took(ring: SendRing, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    full_sender, _ = pairs[ENTRIES + 1]
    full_sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = os.urandom(1 << 20)  # more than the small socket takes; about what the others take
    written = ring.send(descriptors(pairs), data)
    assert written is not None and len(written) == len(pairs)
    partial = written[ENTRIES + 1]
    assert 0 < partial < len(data)
    for (_, receiver), count in zip(pairs, written, strict=True):
        # What each socket took arrives; the caller sends the rest (here: by hand, as the transport would).
        assert receive(receiver, count) == data[:count]


def test_broken_and_bad_descriptors_take_nothing_and_cost_the_others_nothing(
    ring: SendRing, pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    pairs[2][1].close()  # the peer is gone: EPIPE (no SIGPIPE: MSG_NOSIGNAL)
    fds = descriptors(pairs)
    fds[5] = -1  # not a descriptor
    written = ring.send(fds, b"tick")
    assert written is not None
    assert written[2] == 0 and written[5] == 0
    assert written.count(4) == len(pairs) - 2
    for index, (_, receiver) in enumerate(pairs):
        if index not in (2, 5):
            assert receive(receiver, 4) == b"tick"


def test_a_closed_ring_takes_nothing(ring: SendRing, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    ring.close()
    ring.close()  # twice is fine
    assert ring.closed
    assert ring.send(descriptors(pairs), b"x") == [0] * len(pairs)
