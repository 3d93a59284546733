"""nft transactions as text, for the firewall step (commands.py). Pure.

Three shapes: the whole table replaced (`firewall_transaction`, atomic), elements deleted and
added (`element_transaction`), and a table loaded from nothing in two parts: its structure
with empty tenant maps first (`without_tenant_elements`), the maps' elements later
(`tenant_elements`). The split is safe because the structure alone already isolates: every
tenant packet that no map entry accepts is dropped (input chain), and forwarding to or from
tenants is dropped whatever the maps hold (forward chain); the elements only grant services.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.engine.hoststate import FIREWALL_FAMILY, FIREWALL_TABLE, HOST_MAPS, TENANT_MAPS
from reconciler.engine.plan import Element


def firewall_transaction(text: str | None, family: str = FIREWALL_FAMILY,
                         table: str = FIREWALL_TABLE) -> str:
    """One nft file = one transaction: declare (so delete cannot fail), delete, define again.
    Only our table is named; nothing else in the ruleset is touched. text None = delete only."""
    head = f"table {family} {table} {{}}\ndelete table {family} {table}\n"
    return head + (text or "")


def element_transaction(removed: Iterable[Element], added: Iterable[Element],
                        family: str = FIREWALL_FAMILY, table: str = FIREWALL_TABLE) -> str:
    """`delete element` / `add element` statements for ("elem", map, key, value) items,
    deletions first; one file, so one transaction. A changed value is a delete plus an add."""
    lines = []
    for verb, items in (("delete", removed), ("add", added)):
        by_map: dict[str, list[str]] = {}
        for _, name, key, value in sorted(items, key=str):
            # A /32 or /128 as a plain address: the tenant host maps are hash maps, which
            # take no prefixes (an interval map reads the plain address as the /32 or /128).
            text = str(key).removesuffix("/128" if ":" in str(key) else "/32")
            by_map.setdefault(str(name), []).append(
                f"{text} : {value}" if verb == "add" and value != "" else text)
        lines += [f"{verb} element {family} {table} {name} {{ {', '.join(keys)} }}"
                  for name, keys in sorted(by_map.items())]
    return "\n".join(lines) + "\n"


# nft 1.0.6 deletes an element of an interval set by walking the set: ~4 ms per LAN at 5.4k
# LANs (666 deletions took 2.1-2.9 s), while deleting 2,000 elements of the tenant host
# hash map takes ~0.06 s and loading the whole 16k-tenant table ~0.15 s. Beyond this many
# interval deletions one `nft -f` replacing the table (as atomic) is the faster transaction.
INTERVAL_DELETE_LIMIT = 16


def interval_deletes(removed: Iterable[Element]) -> int:
    """Deleted elements that live in an interval set (everything but the host hash maps),
    IPv4 and IPv6 alike: nft walks each interval set per delete."""
    return sum(1 for e in removed if e[0] == "elem" and e[1] not in HOST_MAPS)


# Written by nftables.Table.text for the tenant maps only, and only when they hold elements:
# a multi-line block (a routed-range set writes its few elements on one line).
_BLOCK_OPEN = "\t\telements = {"
_BLOCK_CLOSE = "\t\t}"


def without_tenant_elements(text: str) -> str:
    """The table text with its tenant maps declared empty (everything else as it is)."""
    out: list[str] = []
    inside = False
    for line in text.split("\n"):
        if inside:
            inside = line != _BLOCK_CLOSE
        elif line == _BLOCK_OPEN:
            inside = True
        else:
            out.append(line)
    return "\n".join(out)


def tenant_elements(elements: Iterable[Element]) -> list[Element]:
    """The elements of the tenant maps (what `without_tenant_elements` left out)."""
    return [e for e in elements if e[0] == "elem" and e[1] in TENANT_MAPS]
