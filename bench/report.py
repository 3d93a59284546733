"""Turn measured samples into the results table (terminal and bench/RESULTS.md)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from .measure import SizeResult

TARGET_N = 16383


def median(result: SizeResult, key: str) -> float | None:
    values = result.samples.get(key)
    return statistics.median(values) if values else None


def secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.0f} MiB"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _with_n(result: SizeResult, key: str, text: str) -> str:
    n = len(result.samples.get(key, []))
    return f"{text} (n=1)" if n == 1 and text != "-" else text


Row = tuple[str, Callable[[SizeResult], str]]


def _seconds_row(label: str, key: str) -> Row:
    return label, lambda r: _with_n(r, key, secs(median(r, key)))


def rows() -> list[Row]:
    stage_keys = ("render", "observe", "plan", "guard", "snapshot", "apply", "verify",
                  "after")

    def stages_of(prefix: str) -> Callable[[SizeResult], str]:
        def stages(r: SizeResult) -> str:
            parts = [f"{k} {secs(median(r, prefix + k))}" for k in stage_keys
                     if median(r, prefix + k) is not None]
            return ", ".join(parts) or "-"
        return stages

    stages = stages_of("cold_")

    def cold_vs_floor(r: SizeResult) -> str:
        x = median(r, "cold_over_floor")
        return "-" if x is None else f"{x:.2f}x"

    def naive_vs_cold(r: SizeResult) -> str:
        x = ratio(median(r, "naive"), median(r, "cold"))
        return "-" if x is None else f"{x:.1f}x faster"

    def noop_writes(r: SizeResult) -> str:
        w = r.samples.get("noop_writes")
        return "-" if not w else str(int(max(w)))

    def noop_reads(r: SizeResult) -> str:
        names = sorted({k.removeprefix("noop_read_") for k in r.samples
                        if k.startswith("noop_read_")},
                       key=lambda k: -(median(r, "noop_read_" + k) or 0))
        return ", ".join(f"{k} {secs(median(r, 'noop_read_' + k))}" for k in names) or "-"

    def loss(r: SizeResult) -> str:
        pl = r.facts.get("packet_loss")
        if not pl:
            return "-"
        return f"{pl['lost']} of {pl['sent']}"

    return [
        _seconds_row("cold converge: load+validate+render+apply+verify", "cold"),
        _seconds_row("  of which load+validate", "cold_load"),
        ("  engine stages", stages),
        _seconds_row("  as a process, incl. Python start-up", "cold_process"),
        _seconds_row("floor: setconf + ip -batch + nft -f + C-loader parse", "floor"),
        _seconds_row("  wg setconf (one file)", "floor_wg_setconf"),
        _seconds_row("  ip -batch (all routes)", "floor_ip_batch"),
        _seconds_row("  nft -f (the engine's table)", "floor_nft_f"),
        _seconds_row("  read + yaml.CSafeLoader, all files", "floor_yaml_c_parse"),
        ("cold converge / floor (median of per-pair ratios)", cold_vs_floor),
        _seconds_row("naive: wg set/peer + ip route add/route + ruamel rt", "naive"),
        _seconds_row("  wg set, one process per peer", "naive_wg_set_per_peer"),
        _seconds_row("  ip route add, one process per route", "naive_ip_route_per_route"),
        _seconds_row("  ruamel.yaml round-trip parse", "naive_yaml_ruamel_rt"),
        ("naive / cold converge", naive_vs_cold),
        _seconds_row("one-tenant change: commit -> verified (service)", "change"),
        _seconds_row("  engine part (render..verify)", "change_engine"),
        ("    engine stages", stages_of("change_")),
        _seconds_row("  outside the engine: fetch, listing, load, admission, intent",
                     "change_outside_engine"),
        _seconds_row("  whole cycle: + full enforce, audit commit + push", "change_cycle"),
        _seconds_row("no-op cycle (service: fetch + full observe + plan)", "noop"),
        ("  host writes in no-op cycles", noop_writes),
        _seconds_row("  engine: lock (+ host-route guard setup)", "noop_lock"),
        _seconds_row("  engine: observe (its reads run at once)", "noop_observe"),
        ("    reads (each: command + parse; they overlap)", noop_reads),
        _seconds_row("  engine: plan", "noop_plan"),
        _seconds_row("  outside the engine: fetch, state, audit", "noop_outside_engine"),
        _seconds_row("validate whole tree (`tunnelctl validate`)", "validate"),
        _seconds_row("cold converge through the service (first cycle)", "service_cold"),
        _seconds_row("reboot recovery: service start on an empty interface -> all verified",
                     "recovery"),
        ("  wireguard-go RSS right after recovery", lambda r: mib(median(r, "recovery_wg_rss_kb"))),
        ("bulk removal of 2,000 tunnels / adding them back (engine)",
         lambda r: f"{secs(median(r, 'bulk_remove'))} / {secs(median(r, 'bulk_add'))}"),
        ("  of which apply", lambda r: f"{secs(median(r, 'bulk_remove_apply'))} / "
         f"{secs(median(r, 'bulk_add_apply'))}"),
        ("bulk removal of all tunnels / adding all back (engine)",
         lambda r: f"{secs(median(r, 'bulk_remove_all'))} / {secs(median(r, 'bulk_add_all'))}"),
        ("  of which apply", lambda r: f"{secs(median(r, 'bulk_remove_all_apply'))} / "
         f"{secs(median(r, 'bulk_add_all_apply'))}"),
        ("peak RSS reconciler: CLI converge", lambda r: mib(median(r, "rss_cli_kb"))),
        ("peak RSS reconciler: service", lambda r: mib(median(r, "rss_service_kb"))),
        ("peak RSS wireguard-go (after cold / service / bulk)",
         lambda r: f"{mib(median(r, 'rss_wg_cold_kb'))} / {mib(median(r, 'rss_wg_service_kb'))}"
                   f" / {mib(median(r, 'rss_wg_bulk_kb'))}"),
        ("ping loss, untouched tunnel, 1,000-tenant apply+remove", loss),
    ]


def table(results: Sequence[SizeResult]) -> str:
    head = "| metric | " + " | ".join(f"N = {r.n:,}" for r in results) + " |"
    sep = "|---|" + "---:|" * len(results)
    lines = [head, sep]
    for label, fn in rows():
        lines.append(f"| {label} | " + " | ".join(fn(r) for r in results) + " |")
    return "\n".join(lines)


def packet_loss_of(results: Sequence[SizeResult]) -> dict[str, Any] | None:
    """The packet-loss run (measured once, at 1,000 tenants)."""
    return next((r.facts["packet_loss"] for r in results if r.facts.get("packet_loss")), None)


def targets(result: SizeResult, loss: dict[str, Any] | None = None
            ) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) at the target size; `loss` from the packet-loss run."""
    cold, fl, naive = median(result, "cold"), median(result, "floor"), median(result, "naive")
    change, noop = median(result, "change"), median(result, "noop")
    validate = median(result, "validate")
    writes = max(result.samples.get("noop_writes", [0]))
    pl: dict[str, Any] | None = loss or result.facts.get("packet_loss")

    def check(ok: bool | None) -> bool | None:
        return ok

    x = median(result, "cold_over_floor")
    y = ratio(naive, cold)
    rss = median(result, "rss_service_kb")
    rm, add = median(result, "bulk_remove"), median(result, "bulk_add")
    rm_all, add_all = median(result, "bulk_remove_all"), median(result, "bulk_add_all")
    count = result.facts.get("bulk_count", 2000)
    return [
        ("cold converge <= 1.3x floor", "-" if x is None else f"{x:.2f}x (medians {secs(cold)} "
         f"vs {secs(fl)})", check(None if x is None else x <= 1.3)),
        (">= 10x faster than naive", "-" if y is None else f"{y:.1f}x ({secs(naive)})",
         check(None if y is None else y >= 10)),
        ("one-tenant change commit -> verified <= 300 ms", secs(change),
         check(None if change is None else change <= 0.3)),
        ("no-op cycle <= 250 ms, zero writes", f"{secs(noop)}, {int(writes)} writes",
         check(None if noop is None else noop <= 0.25 and writes == 0)),
        ("validate whole tree <= 4 s", secs(validate),
         check(None if validate is None else validate <= 4)),
        ("service peak RSS <= 250 MiB", mib(rss), check(None if rss is None else rss <= 250 * 1024)),
        (f"removals as fast as additions ({count:,} and all; <= 1.25x)",
         "-" if rm is None or add is None or rm_all is None or add_all is None else
         f"{secs(rm)} vs {secs(add)}; {secs(rm_all)} vs {secs(add_all)}",
         check(None if rm is None or add is None or rm_all is None or add_all is None
               else rm <= 1.25 * add and rm_all <= 1.25 * add_all)),
        ("zero packets lost on untouched tunnels",
         "-" if pl is None else f"{pl['lost']} lost of {pl['sent']} pings "
         f"({pl['tenants']:,}-tenant apply + removal)",
         check(None if pl is None else pl["lost"] == 0)),
    ]


def targets_table(result: SizeResult, loss: dict[str, Any] | None = None) -> str:
    lines = [f"| target (N = {result.n:,}) | measured | met |", "|---|---|---|"]
    for name, measured, ok in targets(result, loss):
        mark = "n/a" if ok is None else ("yes" if ok else "**no**")
        lines.append(f"| {name} | {measured} | {mark} |")
    return "\n".join(lines)
