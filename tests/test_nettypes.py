"""The interface address types of the repo model: what they accept, and every refusal word for
word (the messages reach ops at the key in the gateway file)."""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv6Interface
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from reconciler.repo.model import InterfaceAddress, InterfaceAddress6

V4: TypeAdapter[IPv4Interface] = TypeAdapter(InterfaceAddress)
V6: TypeAdapter[IPv6Interface] = TypeAdapter(InterfaceAddress6)


def refusal(adapter: TypeAdapter[Any], value: Any) -> str:
    with pytest.raises(ValidationError) as err:
        adapter.validate_python(value)
    return str(err.value.errors()[0]["msg"])


def test_interface_addresses_keep_their_prefix() -> None:
    assert V4.validate_python("10.20.0.1/16") == IPv4Interface("10.20.0.1/16")
    assert V6.validate_python("fd42:4242:1::1/48") == IPv6Interface("fd42:4242:1::1/48")
    assert V4.dump_python(IPv4Interface("10.20.0.1/16")) == "10.20.0.1/16"


@pytest.mark.parametrize(("adapter", "value", "message"), [
    (V4, "10.20.0.300/16",
     "Value error, '10.20.0.300/16' is not an address with prefix such as '10.20.0.1/16'"),
    (V4, "10.20.0.1",
     "Value error, '10.20.0.1' must be an IPv4 address with prefix such as '10.20.0.1/16'"),
    (V4, "fd42::1/48",
     "Value error, 'fd42::1/48' must be an IPv4 address with prefix such as '10.20.0.1/16'"),
    (V6, "fd42::g/48",
     "Value error, 'fd42::g/48' is not an address with prefix such as 'fd42:4242:1::1/48'"),
    (V6, "fd42::1",
     "Value error, 'fd42::1' must be an IPv6 address with prefix such as 'fd42:4242:1::1/48'"),
    (V6, "10.20.0.1/16",
     ("Value error, '10.20.0.1/16' must be an IPv6 address with prefix such as "
     "'fd42:4242:1::1/48'")),
    (V6, "2001:db8::1/48",
     ("Value error, 2001:db8::/48 is not unique local IPv6 space; IPv6 inside tunnels must lie "
     "inside fc00::/7 (e.g. fd42:4242:1::/48)")),
])
def test_every_interface_address_refusal_word_for_word(adapter: TypeAdapter[Any], value: str,
                                                       message: str) -> None:
    assert refusal(adapter, value) == message
