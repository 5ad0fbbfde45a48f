"""Parsing RPC worker addresses (``--rpc``, ``LLAMA_ARG_RPC``) into endpoints ggml can use."""

from __future__ import annotations

import pytest

from haloserve.engine.rpc import DEFAULT_PORT, Endpoint, parse_endpoint, parse_endpoints
from haloserve.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("10.0.0.2:50053", "10.0.0.2", 50053),
        (" box-2.lan:1 ", "box-2.lan", 1),
        ("localhost", "localhost", DEFAULT_PORT),
        ("[fe80::1]:6000", "fe80::1", 6000),
        ("[::1]", "::1", DEFAULT_PORT),
        ("::1", "::1", DEFAULT_PORT),
        ("10.0.0.2:65535", "10.0.0.2", 65535),
    ],
)
def test_parse_endpoint(text: str, host: str, port: int) -> None:
    assert parse_endpoint(text) == Endpoint(host, port)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("10.0.0.2:0", "outside 1-65535"),
        ("10.0.0.2:65536", "outside 1-65535"),
        ("10.0.0.2:http", "not a number"),
        ("10.0.0.2:-1", "not a number"),
        ("10.0.0.2:", "not a number"),
        ("[::1]x", r"\[addr\]:port"),
        ("[::1", r"\[addr\]:port"),
        ("[box]:1", "not an IPv6 address"),
        ("fe80::1:50052:x", r"\[addr\]:port"),
        ("bad host:1", "not a host name"),
        ("-box:1", "not a host name"),
        (":50052", "not a host name"),
    ],
)
def test_bad_endpoint_is_one_clear_error(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as info:
        parse_endpoint(text)
    assert "\n" not in info.value.message


def test_string_forms_round_trip_and_ggml_refuses_ipv6() -> None:
    v4, v6 = parse_endpoint("10.0.0.2"), parse_endpoint("[::1]:7")
    assert str(v4) == v4.for_ggml() == "10.0.0.2:50052"
    assert str(v6) == "[::1]:7" and parse_endpoint(str(v6)) == v6
    # ggml splits at the first ':' and opens IPv4 sockets: handing it "[::1]:7" would abort the process
    with pytest.raises(ConfigError, match="IPv4-only"):
        v6.for_ggml()


def test_parse_endpoints_lists_and_refuses_duplicates() -> None:
    assert parse_endpoints("a:1,b:2,, ") == [Endpoint("a", 1), Endpoint("b", 2)]
    assert parse_endpoints(["a:1", "b"]) == [Endpoint("a", 1), Endpoint("b", DEFAULT_PORT)]
    with pytest.raises(ConfigError, match="given twice"):
        parse_endpoints("a:50052,a")
