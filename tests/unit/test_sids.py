"""Session ids drawn from blocks of random bytes: each byte used once, and never shared with a forked child."""

from __future__ import annotations

import os
import re

from gateway.protocol.sids import new_sid


def test_ids_are_url_safe_and_never_repeat_across_blocks() -> None:
    ids = [new_sid() for _ in range(2_000)]  # several blocks of 256
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{20}", sid) for sid in ids)


def test_a_forked_child_draws_ids_of_its_own() -> None:
    new_sid()  # the parent holds a block with ids left in it
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's side
        os.write(write, new_sid().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    childs = os.read(read, 64).decode()
    os.close(read)
    assert childs != new_sid()  # without the fork hook, the child would hand out the parent's next id
