"""One loop turn's fan-out, written to each WebSocket client in as few writes as it can.

`Engine.broadcast` opens a batch on a turn's first fan-out and writes it when
the turn ends (a `call_soon`), so whatever the turn sends joins it: every
message of a Redis read, of other reads in the same turn (a cluster node's
several pub/sub connections), and replies sent meanwhile, in order. At low
rates a turn carries one message and the batch is written at once; under
load a read carries several and each client gets them in one write. Nothing
is held on a timer.

Fan-out costs about one write per recipient, so the common case is kept to
just that: when every send of a batch goes to one audience (one room: a
node serving one topic, or any batch of a single message), the batch's
frames are joined once and the same bytes are written straight to the
socket of every client that keeps up (`Session.straight_fd`): all of them
in one system call where io_uring is available (`send_ring`), else one
`os.write` each. A batch with several audiences
(several topics, a notification beside market data) collects each client's
frames on its session instead and writes them once, in the order they were
sent.

Either way a client whose transport still holds unsent bytes is not written
to in bulk: its packets go one by one through `Session.deliver`, behind
those bytes, which conflates market data for a lagging client and bounds
the rest. Frames are written in pieces of about `conflate_above` bytes, so
a client that falls behind in the middle of a large batch is seen doing so
before the rest of the batch reaches it.
"""

from __future__ import annotations

import os
from operator import attrgetter
from typing import TYPE_CHECKING, Final

from gateway.protocol.send_ring import UNKNOWN

if TYPE_CHECKING:
    from gateway.protocol.send_ring import SendRing
    from gateway.protocol.session import Packet, Session

Send = tuple[tuple["Session", ...], "Packet", "str | None"]  # (recipients, packet, conflation key)
_STRAIGHT_FD: Final = attrgetter("straight_fd")


class WriteBatch:
    """A loop turn's sends, queued in order; `write` delivers them all."""

    __slots__ = ("_conflate_above", "_ring", "_sends")

    def __init__(self, conflate_above: int, ring: SendRing | None = None) -> None:
        self._conflate_above = conflate_above
        self._ring = ring
        self._sends: list[Send] = []

    def add(self, recipients: tuple[Session, ...], packet: Packet, conflate_key: str | None) -> None:
        self._sends.append((recipients, packet, conflate_key))

    def write(self) -> None:
        sends = self._sends
        if not sends:
            return
        audience = sends[0][0]
        if all(recipients is audience or recipients == audience for recipients, _, _ in sends):
            self._write_shared(audience, sends)
        else:
            self._write_each(sends)

    def _pieces(self, sends: list[Send]) -> list[tuple[bytes, int]]:
        """The batch's frames joined into pieces of about `conflate_above` bytes: (bytes, index of the next send)."""
        pieces: list[tuple[bytes, int]] = []
        frames: list[bytes] = []
        size = 0
        for index, (_, packet, _) in enumerate(sends, 1):
            frames.append(packet.frame)
            size += len(packet.frame)
            if size > self._conflate_above or index == len(sends):
                pieces.append((frames[0] if len(frames) == 1 else b"".join(frames), index))
                frames, size = [], 0
        return pieces

    def _write_shared(self, audience: tuple[Session, ...], sends: list[Send]) -> None:
        """One audience: the same bytes to every client that keeps up."""
        pieces = self._pieces(sends)
        if len(pieces) == 1:
            data = pieces[0][0]
            if self._ring is not None and not self._ring.closed:
                self._send_ring(self._ring, audience, sends, data)
                return
            size = len(data)
            write = os.write
            for session in audience:
                fd = session.straight_fd  # None: closed, backlogged or long-polling
                if fd is None:
                    session.deliver_all(sends, 0)
                    continue
                # `Session.write`, inlined: this loop runs once per delivery.
                try:
                    written = write(fd, data)
                except OSError:  # full (EAGAIN) or broken: the transport takes it all, and finds out which
                    written = 0
                if written != size:
                    session.write_rest(data, written)
            return
        for session in audience:
            if session.straight_fd is None:
                session.deliver_all(sends, 0)
                continue
            for data, after in pieces:
                session.write(data)
                if session.straight_fd is None:  # backlogged from here on: the rest goes packet by packet
                    session.deliver_all(sends, after)
                    break

    @staticmethod
    def _send_ring(ring: SendRing, audience: tuple[Session, ...], sends: list[Send], data: bytes) -> None:
        """`_write_shared`'s one piece, through io_uring: no Python runs per recipient unless one falls behind."""
        fds = list(map(_STRAIGHT_FD, audience))
        if None in fds:  # closed, backlogged or long-polling: those go packet by packet
            for session, fd in zip(audience, fds, strict=True):
                if fd is None:
                    session.deliver_all(sends, 0)
            audience = tuple(session for session, fd in zip(audience, fds, strict=True) if fd is not None)
            fds = [fd for fd in fds if fd is not None]
        written = ring.send(fds, data)
        if written is None:
            return
        size = len(data)
        for session, count in zip(audience, written, strict=True):
            if count == UNKNOWN:  # whether any of it went is not known: the stream cannot go on
                session.close("write_failed", abort=True)
            elif count != size:
                session.write_rest(data, count)

    @staticmethod
    def _write_each(sends: list[Send]) -> None:
        """Several audiences: each client's frames collected on its session, then one write each."""
        collecting: list[Session] = []
        for recipients, packet, conflate_key in sends:
            for session in recipients:
                if session.collect(packet, conflate_key):
                    collecting.append(session)
        for session in collecting:
            session.flush_collected()
