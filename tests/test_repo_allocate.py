"""The /30 allocator: never a used, reserved or misaligned block, first free wins, and the pool
fills exactly (16,383 tenants in 10.20.0.0/16, then a clear "pool exhausted" error). The
IPv6 allocator likewise, found from the used blocks even in a pool of 2**32 prefixes."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from repo_kit import GATEWAY_YAML

from reconciler.repo.allocate import PoolExhausted, allocate, allocate6
from reconciler.repo.model import Gateway
from reconciler.repo.yamlio import parse

GATEWAY = Gateway.model_validate(parse(GATEWAY_YAML.encode()).value)  # type: ignore[union-attr]
POOL = IPv4Network("10.20.0.0/16")


def block(index: int) -> IPv4Network:
    return IPv4Network((int(POOL.network_address) + index * 4, 30))


def small_gateway(reserved: tuple[str, ...] = ()) -> Gateway:
    return GATEWAY.model_copy(update={
        "pool": IPv4Network("10.20.0.0/24"),
        "reserved": tuple(IPv4Network(r) for r in reserved)})


def test_first_free_block_skips_the_gateways_own() -> None:
    assert allocate(GATEWAY, []) == IPv4Network("10.20.0.4/30")
    shipped = [IPv4Network(n) for n in ("10.20.0.4/30", "10.20.0.8/30", "10.20.0.16/30")]
    assert allocate(GATEWAY, shipped) == IPv4Network("10.20.0.12/30")


def test_a_lan_or_reserved_range_inside_the_pool_blocks_every_block_it_touches() -> None:
    gw = GATEWAY.model_copy(update={"reserved": (IPv4Network("10.20.0.0/28"),)})
    assert allocate(gw, []) == IPv4Network("10.20.0.16/30")
    assert allocate(GATEWAY, [IPv4Network("10.20.0.0/27")]) == IPv4Network("10.20.0.32/30")


def test_sixteen_thousand_three_hundred_eighty_three_fit_then_the_pool_is_exhausted() -> None:
    every = [block(i) for i in range(1, 16384)]
    for missing in (1, 8191, 16383):
        assert allocate(GATEWAY, every[:missing - 1] + every[missing:]) == block(missing)
    with pytest.raises(PoolExhausted) as err:
        allocate(GATEWAY, every)
    assert "pool 10.20.0.0/16 exhausted (16383 tunnels allocated)" in str(err.value)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["10.20.0.32/28", "10.20.0.128/26", "10.20.0.250/32",
                                 "10.20.0.64/30"]), max_size=3, unique=True))
def test_allocating_one_by_one_fills_a_pool_exactly(reserved: list[str]) -> None:
    gw = small_gateway(tuple(reserved))
    forbidden = [gw.gateway_subnet, *gw.reserved]
    free = [b for b in IPv4Network("10.20.0.0/24").subnets(new_prefix=30)
            if not any(b.overlaps(f) for f in forbidden)]
    used: list[IPv4Network] = []
    for _ in range(len(free)):
        got = allocate(gw, used)
        assert got not in used and got.prefixlen == 30
        assert int(got.network_address) % 4 == 0 and got.subnet_of(gw.pool)
        assert not any(got.overlaps(f) for f in forbidden)
        used.append(got)
    assert used == free  # in order: always the lowest free block
    with pytest.raises(PoolExhausted):
        allocate(gw, used)


@settings(max_examples=100, deadline=None)
@given(used_idx=st.sets(st.integers(0, 16383), max_size=300),
       lans=st.lists(st.builds(lambda i, p: IPv4Network((int(POOL.network_address) + i * 4, p),
                                                        strict=False),
                               st.integers(0, 16383), st.integers(20, 32)), max_size=3),
       reserved=st.lists(st.builds(lambda i, p: IPv4Network((0x0A000000 + i * 4096, p),
                                                            strict=False),
                                   st.integers(0, 4095), st.integers(12, 28)), max_size=3))
def test_the_answer_is_the_lowest_block_nothing_touches(used_idx: set[int],
                                                         lans: list[IPv4Network],
                                                         reserved: list[IPv4Network]) -> None:
    gw = GATEWAY.model_copy(update={"reserved": tuple(reserved)})
    used = [block(i) for i in used_idx] + lans
    spans = [(int(n.network_address), int(n.broadcast_address))
             for n in used + [gw.gateway_subnet, *gw.reserved]]

    def touched(i: int) -> bool:  # brute force: does anything overlap block i?
        lo = int(POOL.network_address) + i * 4
        return any(a <= lo + 3 and lo <= b for a, b in spans)

    try:
        got = allocate(gw, used)
    except PoolExhausted:
        assert all(touched(i) for i in range(16384))
        return
    index = (int(got.network_address) - int(POOL.network_address)) // 4
    assert got == block(index)  # aligned and inside the pool
    assert not touched(index)
    assert all(touched(i) for i in range(index))


# ---- IPv6: the first gap among sorted used blocks, never a walk over the pool ----------------

def dual_gateway(pool6: str = "fd42:4242:1::/48", *, prefix6: int = 64,
                 reserved6: tuple[str, ...] = (), routed6: tuple[str, ...] = ()) -> Gateway:
    net = IPv6Network(pool6)
    text = (GATEWAY_YAML + f"address6: {net.network_address + 1}/{net.prefixlen}\n"
            f"pool6: {pool6}\nallocation_prefix6: {prefix6}\n"
            f"reserved6: [{', '.join(reserved6)}]\nrouted_ranges6: [{', '.join(routed6)}]\n")
    return Gateway.model_validate(parse(text.encode()).value)  # type: ignore[union-attr]


def test_first_free_ipv6_prefix_skips_the_gateways_block_and_infrastructure() -> None:
    gw = dual_gateway(reserved6=("fd42:4242:1:2::/63",), routed6=("fd42:4242:1:5::/64",))
    assert allocate6(gw, []) == IPv6Network("fd42:4242:1:1::/64")
    used = [IPv6Network("fd42:4242:1:1::/64"), IPv6Network("fd42:4242:1:4::/64")]
    assert allocate6(gw, used) == IPv6Network("fd42:4242:1:6::/64")
    assert allocate6(gw, used, [IPv6Network("fd42:4242:1:6::/63")]) == \
        IPv6Network("fd42:4242:1:8::/64")


def test_ipv6_in_a_huge_pool_is_found_from_the_used_blocks_alone() -> None:
    # 2**32 /64s, the lower three quarters reserved: a walk over the blocks would never end.
    gw = dual_gateway("fd42:4242::/32", reserved6=("fd42:4242::/33", "fd42:4242:8000::/34"))
    start = int(IPv6Network("fd42:4242:c000::/34").network_address)
    used = [IPv6Network((start + (i << 64), 64)) for i in range(10_000)]
    assert allocate6(gw, used[::-1]) == IPv6Network("fd42:4242:c000:2710::/64")
    with pytest.raises(PoolExhausted, match="pool6 fd42:4242::/32 exhausted"):
        allocate6(gw, [IPv6Network("fd42:4242:c000::/34")])


def test_a_small_pool6_fills_exactly_then_is_exhausted() -> None:
    gw = dual_gateway("fd42:4242:1::/62")  # four /64s, the first is the gateway's
    used: list[IPv6Network] = []
    for _ in range(3):
        used.append(allocate6(gw, used))
    assert used == [IPv6Network(f"fd42:4242:1:{i}::/64") for i in (1, 2, 3)]
    with pytest.raises(PoolExhausted):
        allocate6(gw, used)


def test_allocate6_needs_a_dual_stack_gateway() -> None:
    with pytest.raises(ValueError, match="has no IPv6"):
        allocate6(GATEWAY, [])


POOL6 = IPv6Network("fd42:4242:1::/56")  # 256 /64s: small enough for brute force


@settings(max_examples=100, deadline=None)
@given(used=st.lists(st.builds(
    lambda i, p: IPv6Network((int(POOL6.network_address) + (i << 64), p), strict=False),
    st.integers(0, 300), st.integers(50, 72)), max_size=12),
    reserved=st.lists(st.builds(
        lambda i, p: IPv6Network((int(POOL6.network_address) + (i << 64), p), strict=False),
        st.integers(0, 255), st.integers(56, 66)), max_size=3))
def test_the_ipv6_answer_is_the_lowest_block_nothing_touches(
        used: list[IPv6Network], reserved: list[IPv6Network]) -> None:
    gw = dual_gateway(str(POOL6), reserved6=tuple(str(r) for r in reserved))
    blocks = list(POOL6.subnets(new_prefix=64))
    forbidden = [*used, *reserved, IPv6Network("fd42:4242:1::/64")]
    free = [b for b in blocks if not any(b.overlaps(f) for f in forbidden)]
    if not free:
        with pytest.raises(PoolExhausted):
            allocate6(gw, used)
        return
    assert allocate6(gw, used) == free[0]
