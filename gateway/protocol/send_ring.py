"""The same bytes sent to many sockets in one system call: io_uring's SEND, for the fan-out.

A fan-out writes one batch's bytes to every client of a room, and one `os.write` each pays a
system call apiece: entry and exit, the descriptor looked up as a file, the GIL let go and taken
back. io_uring takes a whole room's sends in one `io_uring_enter` (loadtests/README.md, "Ninth
round": 30% more deliveries per CPU-second on loopback, alternated pairs).

The ring is the kernel's own interface, without liburing: `io_uring_setup` and `io_uring_enter`
through libc's `syscall`, the rings mapped with `mmap`. Every submission entry is a SEND with
MSG_DONTWAIT (a socket that cannot take it all answers at once with what it took, or -EAGAIN,
and never waits) and MSG_NOSIGNAL, from one buffer of the ring's own that the bytes are copied
into. A call always uses entries 0..n-1 (the ring's index array says which entry each position
takes), so the entries keep a room's descriptors and the buffer's address from one call to the
next, and the next message to the same room writes only the length column, if that; a column is
written in C (a strided memoryview assignment) and the answers are read back the same way: a call
costs no Python per socket unless one of them did not take everything. Each call waits for all
its completions before it returns (a nonblocking send completes during the call), so it is as
synchronous as the writes it replaces: nothing of it is left in flight after.

Where io_uring is not available (Linux before 5.6, `kernel.io_uring_disabled`, a seccomp profile
that refuses it, as Docker 25+'s and containerd 2.0+'s defaults do), `SendRing.open` raises OSError
and the fan-out writes one socket at a time.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct
from array import array
from typing import Final

# System call numbers: the same on every Linux architecture (added after their tables were unified).
_SYS_IO_URING_SETUP: Final = 425
_SYS_IO_URING_ENTER: Final = 426
_ENTER_GETEVENTS: Final = 1
_OP_SEND: Final = 26
_FEAT_SINGLE_MMAP: Final = 1
_OFF_SQ_RING: Final = 0
_OFF_CQ_RING: Final = 0x8000000
_OFF_SQES: Final = 0x10000000
_PARAMS_BYTES: Final = 120  # struct io_uring_params
_SQE_BYTES: Final = 64  # struct io_uring_sqe: opcode u8 @0, fd s32 @4, addr u64 @16, len u32 @24,
#                         msg_flags u32 @28, user_data u64 @32
_CQE_BYTES: Final = 16  # struct io_uring_cqe: user_data u64 @0, res s32 @8, flags u32 @12
_SEND_FLAGS: Final = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
DEFAULT_ENTRIES: Final = 4096  # sends per system call; a larger room takes several
BUFFER_BYTES: Final = 256 * 1024  # a batch's bytes are copied here; a larger one is sent from where it is
UNKNOWN: Final = -1  # what `send` counts for a socket whose answer never came

_libc = ctypes.CDLL(None, use_errno=True)
_setup = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_uint, ctypes.c_void_p, use_errno=True)(
    ("syscall", _libc)
)
_enter = ctypes.CFUNCTYPE(
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_void_p,
    ctypes.c_size_t,
    use_errno=True,
)(("syscall", _libc))


def _os_error(what: str) -> OSError:
    number = ctypes.get_errno()
    return OSError(number, f"{what}: {os.strerror(number)}")


class SendRing:
    """One io_uring of SENDs, owned by one thread (the event loop's); `send` is all it does."""

    def __init__(self, ring_fd: int, params: bytes) -> None:
        self._fd = ring_fd
        sq_entries, cq_entries, _, _, _, features = struct.unpack_from("6I", params, 0)
        _, sq_tail, sq_mask, _, _, _, sq_array = struct.unpack_from("7I", params, 40)
        cq_head, cq_tail, cq_mask, _, _, cq_cqes = struct.unpack_from("6I", params, 80)
        sq_bytes = sq_array + sq_entries * 4
        cq_bytes = cq_cqes + cq_entries * _CQE_BYTES
        if features & _FEAT_SINGLE_MMAP:
            self._maps = [mmap.mmap(ring_fd, max(sq_bytes, cq_bytes), offset=_OFF_SQ_RING)]
            sq_map = cq_map = self._maps[0]
        else:
            sq_map = mmap.mmap(ring_fd, sq_bytes, offset=_OFF_SQ_RING)
            cq_map = mmap.mmap(ring_fd, cq_bytes, offset=_OFF_CQ_RING)
            self._maps = [sq_map, cq_map]
        sqe_map = mmap.mmap(ring_fd, sq_entries * _SQE_BYTES, offset=_OFF_SQES)
        self._maps.append(sqe_map)
        self._sq = memoryview(sq_map).cast("I")
        self._cq = memoryview(cq_map).cast("I")
        sqe_bytes = memoryview(sqe_map)
        self._sqe32 = sqe_bytes.cast("I")
        self._sqe_fds = sqe_bytes.cast("i")  # the same, signed, as descriptors come
        self._sqe64 = sqe_bytes.cast("Q")
        self._sq_tail_at = sq_tail // 4
        self._cq_head_at = cq_head // 4
        self._cq_tail_at = cq_tail // 4
        self._cqes_at = cq_cqes // 4
        self._sq_mask = self._sq[sq_mask // 4]
        self._cq_mask = self._cq[cq_mask // 4]
        self._sq_entries = sq_entries
        self._cq_entries = cq_entries
        self._sq_array_at = sq_array // 4
        self._tail = self._sq[self._sq_tail_at]
        self._head = self._cq[self._cq_head_at]
        self._entries = array("I", range(sq_entries))  # what positions map to: entry 0, 1, ... of each call
        self._buffer = ctypes.create_string_buffer(BUFFER_BYTES)
        self._buffer_bytes = memoryview(self._buffer).cast("B")
        self._buffer_address = ctypes.addressof(self._buffer)
        # What entries 0..n-1 hold from the last calls: descriptors, and an address and a length
        # each with how many entries from 0 hold it. The kernel never writes the entries.
        self._entry_fds = array("i")
        self._fd_list: list[int] = []  # the last call's descriptors, as given and as C ints
        self._fd_array = array("i")
        self._entry_address, self._address_entries = 0, 0
        self._entry_size, self._size_entries = 0, 0
        # Each entry says once what it is: a SEND of ours, its user_data its own index (to tell
        # which send an answer is for, should one go wrong).
        sqe_bytes[0 : sq_entries * _SQE_BYTES : _SQE_BYTES] = bytes([_OP_SEND]) * sq_entries
        self._sqe32[7 : sq_entries * 16 : 16] = array("I", [_SEND_FLAGS]) * sq_entries
        self._sqe64[4 : sq_entries * 8 : 8] = array("Q", range(sq_entries))
        self._views = [
            self._sq, self._cq, self._sqe32, self._sqe_fds, self._sqe64, sqe_bytes, self._buffer_bytes
        ]  # fmt: skip

    @classmethod
    def open(cls, entries: int = DEFAULT_ENTRIES) -> SendRing:
        """A ring that has sent a byte over a socket pair; OSError where io_uring cannot."""
        params = ctypes.create_string_buffer(_PARAMS_BYTES)
        ring_fd = _setup(_SYS_IO_URING_SETUP, entries, params)
        if ring_fd < 0:
            raise _os_error("io_uring_setup")
        try:
            ring = cls(ring_fd, params.raw)
        except BaseException:
            os.close(ring_fd)
            raise
        try:
            ring._prove()
        except BaseException:
            ring.close()
            raise
        return ring

    def _prove(self) -> None:
        """Send one byte through a socket pair: a kernel without SEND, or a filter, shows here."""
        left, right = socket.socketpair()
        with left, right:
            left.setblocking(False)
            written = self.send([left.fileno()], b"!")
            if written is not None or right.recv(1) != b"!":
                raise OSError(f"io_uring's SEND does not work here (wrote {written})")

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd < 0:
            return
        for view in self._views:
            view.release()
        for mapped in self._maps:
            mapped.close()
        os.close(self._fd)
        self._fd = -1

    def send(self, fds: list[int], data: bytes) -> list[int] | None:
        """Send `data` to every socket of `fds` (nonblocking); None if each took it all, else what each took.

        A socket that took less (full, or broken: the error is not kept) counts what it took, 0
        at least, and the caller gives the rest to its transport, which finds out which. A send
        whose answer never came (the ring broke while waiting; not seen in practice) counts
        UNKNOWN: whether any of it went is not known, so that connection can only be closed.
        After the ring breaks, or once closed, it takes nothing (0 for every socket).
        """
        count = len(fds)
        if self._fd < 0:
            return [0] * count
        size = len(data)
        if size <= BUFFER_BYTES:
            self._buffer_bytes[:size] = data
            address = self._buffer_address
        else:
            address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0  # the bytes' own, no copy
        if fds != self._fd_list:  # a room's next message: the same descriptors, the same int objects
            self._fd_list, self._fd_array = fds.copy(), array("i", struct.pack(f"{count}i", *fds))
        written: list[int] | None = None
        done = 0
        while done < count:
            n = min(count - done, self._sq_entries)
            self._fill(self._fd_array[done : done + n], address, size)
            self._queue(n)
            first = self._head & self._cq_mask
            taken, answered = self._submit(n)
            answers = self._answers(first, answered, 2)
            if answered < n or answers != struct.pack("i", size) * n:
                written = written or [size] * count
                results = [UNKNOWN] * taken + [0] * (n - taken)  # answers overwrite; never taken: nothing went
                entries = memoryview(self._answers(first, answered, 0)).cast("I").tolist()  # user_data
                for entry, result in zip(entries, memoryview(answers).cast("i").tolist(), strict=True):
                    results[entry] = max(0, result)
                written[done : done + n] = results
            self._head += answered
            self._cq[self._cq_head_at] = self._head & 0xFFFFFFFF
            done += n
            if answered < n:  # broken: everything after goes the slow way
                self.close()
                if written is not None:
                    written[done:] = [0] * (count - done)
                break
        return written

    def _fill(self, fds: array[int], address: int, size: int) -> None:
        """Make entries 0..len(fds)-1 send `size` bytes at `address` to `fds`, writing only what differs."""
        n = len(fds)
        if self._entry_fds[:n] != fds:
            self._sqe_fds[1 : n * 16 : 16] = fds
            self._entry_fds = fds + self._entry_fds[n:]
        if address != self._entry_address or n > self._address_entries:
            self._sqe64[2 : n * 8 : 8] = array("Q", [address]) * n
            self._entry_address, self._address_entries = address, n
        if size != self._entry_size or n > self._size_entries:
            self._sqe32[6 : n * 16 : 16] = array("I", [size]) * n
            self._entry_size, self._size_entries = size, n

    def _queue(self, n: int) -> None:
        """The next `n` positions of the submission ring take entries 0..n-1."""
        start = self._tail & self._sq_mask
        before_end = min(n, self._sq_entries - start)
        at = self._sq_array_at
        self._sq[at + start : at + start + before_end] = self._entries[:before_end]
        if before_end < n:  # the rest wraps around to the ring's start
            self._sq[at : at + n - before_end] = self._entries[before_end:n]
        self._tail += n
        self._sq[self._sq_tail_at] = self._tail & 0xFFFFFFFF

    def _answers(self, first: int, n: int, field: int) -> bytes:
        """One 4-byte field (0: user_data's low half, 2: res) of the `n` answers from position `first` on."""
        at = self._cqes_at + field
        before_end = min(n, self._cq_entries - first)
        column = self._cq[at + first * 4 : at + (first + before_end) * 4 : 4].tobytes()
        if before_end < n:  # the rest wraps around to the ring's start
            column += self._cq[at : at + (n - before_end) * 4 : 4].tobytes()
        return column

    def _submit(self, n: int) -> tuple[int, int]:
        """Give the kernel the `n` entries before the tail; (how many it took, how many answers came)."""
        taken = 0
        while taken < n:
            result = _enter(_SYS_IO_URING_ENTER, self._fd, n - taken, n - taken, _ENTER_GETEVENTS, None, 0)
            if result > 0:
                taken += result
            elif result == 0 or ctypes.get_errno() != errno.EINTR:
                break
        answered = (self._cq[self._cq_tail_at] - self._head) & 0xFFFFFFFF
        while answered < taken:
            result = _enter(_SYS_IO_URING_ENTER, self._fd, 0, taken - answered, _ENTER_GETEVENTS, None, 0)
            if result < 0 and ctypes.get_errno() != errno.EINTR:
                break
            answered = (self._cq[self._cq_tail_at] - self._head) & 0xFFFFFFFF
        return taken, min(answered, taken)
