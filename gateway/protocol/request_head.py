"""The plain form of an upgrade request's head, read without h11.

Every WebSocket connect begins with one such request, and h11's general parser
(its event objects, state machine and header checks) cost about a tenth of a
connect's CPU for it. `plain_upgrade` reads only a strict subset of what h11
reads, and reads it the same way (tests/unit/test_request_head.py checks both
on generated heads): one whole head and nothing after it, ``GET`` of an
origin-form target over HTTP/1.1, CRLF line ends, no folded lines, exactly one
Host, an Upgrade header, no Content-Length or Transfer-Encoding. Anything else
is None, and h11 reads it as it reads every other request.
"""

from __future__ import annotations

import re
from typing import Final

# h11's grammar (h11/_abnf.py), narrowed: method GET, an origin-form target, version 1.1.
_REQUEST_LINE: Final = re.compile(rb"GET (/[\x21-\x7e]*) HTTP/1\.1")
# A header line as h11 reads it, but in linear time. h11's own pattern lets the blanks after the
# colon go to either of its two optional-whitespace runs when the value is empty, so a line of
# blanks that ends in a refused byte costs it quadratic time (8,000 blanks: 142 ms, for one head
# within the size bound). Possessive runs (`*+`) never give blanks back: the same lines match,
# with the same groups, and a refused one fails at once. `http` gives h11 this pattern too.
HEADER_FIELD: Final = re.compile(
    rb"(?P<field_name>[-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*+"
    rb"(?P<field_value>(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*+"
)
_END: Final = b"\r\n\r\n"
# HEADER_FIELD's two classes, for `header_field`: a name's bytes, and the bytes a value may not hold
# (`\x00` and the ASCII blanks but space and tab; those it holds inside, and sheds at its ends).
_NAME_BYTES: Final = b"-!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NOT_IN_VALUE: Final = b"\x00\n\r\x0b\x0c"

Headers = list[tuple[bytes, bytes]]  # names lower-cased, in the order sent (as h11 gives them)


def header_field(line: bytes) -> tuple[bytes, bytes] | None:
    """A header line's name and value as HEADER_FIELD reads them, or None: the same reading without a regex.

    Every connect reads half a dozen lines; a regex match and its groups cost twice these C calls.
    """
    name, colon, rest = line.partition(b":")
    value = rest.strip(b" \t")
    if not colon or not name or name.translate(None, _NAME_BYTES):
        return None
    if len(value.translate(None, _NOT_IN_VALUE)) != len(value):
        return None
    return name, value


def plain_upgrade(data: bytes, max_bytes: int) -> tuple[bytes, Headers] | None:
    """The target and headers of a head in the plain form (see the module), or None."""
    if len(data) > max_bytes or not data.endswith(_END):
        return None
    lines = data[: -len(_END)].split(b"\r\n")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        return None
    headers: Headers = []
    hosts = 0
    upgrade = False
    for line in lines[1:]:
        field = header_field(line)  # an empty line (a second head or a body inside `data`) fails too
        if field is None:
            return None
        name, value = field[0].lower(), field[1]
        if name == b"host":
            hosts += 1
        elif name == b"upgrade":
            upgrade = True
        elif name in (b"content-length", b"transfer-encoding"):
            return None
        headers.append((name, value))
    if hosts != 1 or not upgrade:
        return None
    return request_line[1], headers
