"""Pick the first free tunnel subnet of a gateway's pool. Pure: no files, no repo.

The pool is treated as an array of allocation-sized blocks (16,384 /30s in a /16). Everything
that must not be handed out marks the blocks it touches in a set of block indexes; the answer
is the lowest unmarked index. Cost is linear in the number of used networks plus the pool
size, so 16k tenants allocate in milliseconds.

IPv6 pools are too big for that (a /32 pool6 holds 2**32 /64s), so `allocate6` sorts the block
ranges that used networks touch and returns the first gap: n log n in the used networks, and
independent of the pool's size.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network

from reconciler.repo.model import Gateway


class PoolExhausted(ValueError):
    """Every block of the pool is taken or reserved."""


def _blocks(net: IPv4Network, base: int, top: int, size: int) -> range:
    """Indexes of the pool blocks that `net` overlaps (empty when outside the pool)."""
    lo = int(net.network_address)
    hi = lo + net.num_addresses - 1
    if hi < base or lo > top:
        return range(0)
    return range((max(lo, base) - base) // size, (min(hi, top) - base) // size + 1)


def allocate(gateway: Gateway, used: Iterable[IPv4Network],
             reserved: Iterable[IPv4Network] = ()) -> IPv4Network:
    """The first free `/allocation_prefix` of `gateway.pool`.

    `used`: subnets and LANs of existing tunnels (include revoked tunnels that still hold
    their subnet). `reserved`: more ranges to avoid besides the gateway's own block, its
    reserved and routed ranges and its public endpoint.
    Raises PoolExhausted when nothing is left.
    """
    pool = gateway.pool
    size = 1 << (32 - gateway.allocation_prefix)
    base = int(pool.network_address)
    top = base + pool.num_addresses - 1
    count = pool.num_addresses // size
    taken: set[int] = set()
    for net in used:
        taken.update(_blocks(net, base, top, size))
    allocated = len(taken)
    blocked = set(taken)
    infra = [gateway.gateway_subnet, *gateway.reserved, *gateway.routed_ranges, *reserved]
    if gateway.endpoint_ip is not None:
        infra.append(IPv4Network(gateway.endpoint_ip))
    for net in infra:
        blocked.update(_blocks(net, base, top, size))
    for index in range(count):
        if index not in blocked:
            return IPv4Network((base + index * size, gateway.allocation_prefix))
    raise PoolExhausted(
        f"pool {pool} exhausted ({allocated} tunnels allocated); {len(blocked) - allocated} "
        "more block(s) belong to the gateway or reserved ranges. Revoked subnets free up 30 "
        "days after revoked_at; otherwise add a gateway with another pool"
    )


def _block_range6(net: IPv6Network, base: int, top: int, size: int) -> tuple[int, int] | None:
    """First and last index of the pool6 blocks `net` overlaps, or None when outside."""
    lo = int(net.network_address)
    hi = lo + net.num_addresses - 1
    if hi < base or lo > top:
        return None
    return (max(lo, base) - base) // size, (min(hi, top) - base) // size


def allocate6(gateway: Gateway, used: Iterable[IPv6Network],
              reserved: Iterable[IPv6Network] = ()) -> IPv6Network:
    """The first free `/allocation_prefix6` of `gateway.pool6`, like `allocate`.

    `used`: subnet6 and lans6 of existing tunnels (revoked tunnels still holding theirs
    included). The gateway's own block, reserved6, routed_ranges6 and `reserved` are avoided.
    Raises ValueError for a gateway without IPv6, PoolExhausted when nothing is left.
    """
    pool, own = gateway.pool6, gateway.gateway_subnet6
    if pool is None or own is None:
        raise ValueError(f"gateway {gateway.name} has no IPv6 (address6/pool6)")
    size = 1 << (128 - gateway.allocation_prefix6)
    base = int(pool.network_address)
    top = base + pool.num_addresses - 1
    count = pool.num_addresses // size
    taken = [r for net in used if (r := _block_range6(net, base, top, size)) is not None]
    infra = [own, *gateway.reserved6, *gateway.routed_ranges6, *reserved]
    blocked = taken + [r for net in infra if (r := _block_range6(net, base, top, size))
                       is not None]
    free = 0  # lowest index not yet known to be blocked
    for first, last in sorted(blocked):
        if first > free:
            break
        free = max(free, last + 1)
    if free < count:
        return IPv6Network((base + free * size, gateway.allocation_prefix6))
    raise PoolExhausted(
        f"pool6 {pool} exhausted ({len(taken)} IPv6 prefix(es) and LAN(s) in it); the rest "
        "belongs to the gateway or reserved ranges. Revoked prefixes free up 30 days after "
        "revoked_at; otherwise give the gateway a bigger pool6"
    )
