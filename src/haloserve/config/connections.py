"""Client-connection limits that `halo serve` and `halo gateway` declare alike (docs/security.md)."""

from __future__ import annotations

from haloserve.config.base import option

# One declaration each, used as the field default in both settings classes (pydantic copies a FieldInfo
# into every model that uses it). The keep-alive timeout and connection cap differ between the two
# servers and stay in their own classes.
MAX_HEADER_BYTES = option(
    65536, "Largest request head (request line and headers) in bytes; 431 beyond.", ge=1024, le=1 << 24
)
MAX_HEADER_LINE_BYTES = option(
    8192, "Longest request line (414 beyond) or header line (431 beyond) in bytes.", ge=256, le=1 << 24
)
HEADER_TIMEOUT = option(
    10.0,
    "Seconds a client has to send a complete request head, from connecting or from the first byte"
    " after a keep-alive pause (408 and close beyond).",
    gt=0,
)
BODY_TIMEOUT = option(
    30.0, "Seconds a request body may take to arrive after its head (408 and close beyond).", gt=0
)
