"""Traffic tools that run INSIDE a lab network namespace: `ip netns exec NS python netprobe.py ...`.

Pure standard library and import-free of the package, so it starts fast and runs as a plain
file. The lab side (`reconciler.lab.traffic`) builds the argument lists and reads the results.

Commands:
  serve  UDP echo + TCP accept on one or more addresses, IPv4 and IPv6 (bound before the
         address exists: IP_FREEBIND / IPV6_FREEBIND), every packet/connection logged as one
         JSON line, so a test can prove a packet did or did NOT arrive independently of any
         reply path.
  udp    send one datagram (optionally with a spoofed source) and wait for the echo.
  tcp    try to connect.
  ping   ICMP / ICMPv6 echo (raw socket; the lab machine has no ping binary and needs none).
  flow   a steady ICMP/UDP flow until SIGTERM/SIGINT, then a JSON loss summary.
Every command speaks IPv6 when its address is IPv6 (the address says which family).
Exit status: 0 = got the answer, 1 = no answer, 2 = usage/setup error.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from pathlib import Path

IP_FREEBIND = 15  # bind an address the namespace does not have (yet)
IP_TRANSPARENT = 19  # send with any source address (the spoofing test)
IPV6_TRANSPARENT = 75  # the same two for IPv6 sockets (linux/in6.h)
IPV6_FREEBIND = 78
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0
ICMPV6_ECHO, ICMPV6_ECHOREPLY = 128, 129


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _same_address(a: str, b: str) -> bool:
    """Equal addresses however written (fd00::1 == fd00:0::1)."""
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)


def _socket(family: socket.AddressFamily, kind: socket.SocketKind, *, freebind: bool = False,
            transparent: bool = False) -> socket.socket:
    s = socket.socket(family, kind)
    v6 = family == socket.AF_INET6
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # one socket per family
    if freebind:
        s.setsockopt(*((socket.IPPROTO_IPV6, IPV6_FREEBIND) if v6 else (socket.SOL_IP, IP_FREEBIND)), 1)
    if transparent:
        s.setsockopt(*((socket.IPPROTO_IPV6, IPV6_TRANSPARENT) if v6
                       else (socket.SOL_IP, IP_TRANSPARENT)), 1)
    return s


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def _log_line(fh, **fields: object) -> None:  # type: ignore[no-untyped-def]
    fh.write(json.dumps(fields, sort_keys=True) + "\n")
    fh.flush()


def serve(args: argparse.Namespace) -> int:
    sel = selectors.DefaultSelector()
    # One socket per address and port: the log then says which address a packet reached.
    for bind in args.bind:
        for port in args.udp:
            s = _socket(_family(bind), socket.SOCK_DGRAM, freebind=True)
            s.bind((bind, port))
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, ("udp", port, bind))
        for port in args.tcp:
            s = _socket(_family(bind), socket.SOCK_STREAM, freebind=True)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((bind, port))
            s.listen(16)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, ("tcp", port, bind))
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    with open(args.log, "a", encoding="utf-8") as log:
        Path(args.ready).write_text(str(os.getpid()))
        try:
            while True:
                for key, _ in sel.select():
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    proto, port, dst = key.data
                    if proto == "udp":
                        data, peer = sock.recvfrom(65535)  # IPv6: (addr, port, flow, scope)
                        _log_line(log, proto="udp", src=peer[0], sport=peer[1], dst=dst,
                                  dport=port, payload=data.decode(errors="replace"))
                        try:
                            sock.sendto(data, peer)
                        except OSError:  # no route back (a test may remove it): keep serving
                            pass
                    else:
                        try:
                            conn, peer = sock.accept()
                        except OSError:  # the connection was reset before we took it
                            continue
                        _log_line(log, proto="tcp", src=peer[0], sport=peer[1], dst=dst,
                                  dport=port, payload="")
                        try:
                            conn.sendall(b"ok\n")
                        except OSError:
                            pass
                        finally:
                            conn.close()
        except _Stop:
            return 0


def _udp_socket(dst: str, src: str | None, spoof: bool) -> socket.socket:
    # IP_TRANSPARENT (IPV6_TRANSPARENT) lets a root socket send from an address this namespace
    # does not own: the packet leaves with the forged source, as a hostile customer's would.
    s = _socket(_family(dst), socket.SOCK_DGRAM, transparent=spoof)
    if src:
        s.bind((src, 0))
    return s


def udp(args: argparse.Namespace) -> int:
    payload = args.payload.encode()
    with _udp_socket(args.dst, args.src, args.spoof) as s:
        s.settimeout(args.timeout)
        start = time.monotonic()
        try:
            s.sendto(payload, (args.dst, args.port))
        except OSError as exc:  # no route, local drop: the packet never left, so no reply
            print(json.dumps({"reply": False, "error": f"{type(exc).__name__}: {exc}"}))
            return 1
        deadline = start + args.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            s.settimeout(remaining)
            try:
                data, peer = s.recvfrom(65535)
            except (TimeoutError, ConnectionRefusedError, OSError):
                break
            if data == payload and peer[1] == args.port and _same_address(peer[0], args.dst):
                print(json.dumps({"reply": True, "rtt_ms": round((time.monotonic() - start) * 1e3, 3)}))
                return 0
    print(json.dumps({"reply": False}))
    return 1


def tcp(args: argparse.Namespace) -> int:
    try:
        with socket.create_connection((args.dst, args.port), timeout=args.timeout):
            print(json.dumps({"connected": True}))
            return 0
    except OSError as exc:
        print(json.dumps({"connected": False, "error": type(exc).__name__}))
        return 1


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class _Pinger:
    """ICMP(v6) echo over a raw socket; replies are matched by identifier, source and sequence.

    An ICMPv6 raw socket has the kernel fill in the checksum (it covers a pseudo-header with
    the source address the kernel picks) and delivers no IP header.
    """

    def __init__(self, dst: str) -> None:
        self.dst = dst
        self.ident = os.getpid() & 0xFFFF
        self.v6 = _family(dst) == socket.AF_INET6
        if self.v6:
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.request, self.reply = (ICMPV6_ECHO, ICMPV6_ECHOREPLY) if self.v6 \
            else (ICMP_ECHO, ICMP_ECHOREPLY)

    def send(self, seq: int) -> None:
        payload = b"tunnelctl-lab" + struct.pack("!d", time.monotonic())
        header = struct.pack("!BBHHH", self.request, 0, 0, self.ident, seq & 0xFFFF)
        checksum = 0 if self.v6 else _checksum(header + payload)
        packet = struct.pack("!BBHHH", self.request, 0, checksum, self.ident, seq & 0xFFFF)
        self.sock.sendto(packet + payload, (self.dst, 0))

    def receive(self, timeout: float) -> int | None:
        """Sequence number of one matching echo reply, or None when nothing came in time."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                return None
            start = 0 if self.v6 else (data[0] & 0x0F) * 4
            if len(data) < start + 8:
                continue
            icmp_type, _, _, ident, seq = struct.unpack("!BBHHH", data[start:start + 8])
            if icmp_type == self.reply and ident == self.ident and _same_address(peer[0], self.dst):
                return int(seq)
        return None


class _UdpFlow:
    def __init__(self, dst: str, port: int) -> None:
        self.addr = (dst, port)
        self.sock = socket.socket(_family(dst), socket.SOCK_DGRAM)

    def send(self, seq: int) -> None:
        self.sock.sendto(f"flow-{seq}".encode(), self.addr)

    def receive(self, timeout: float) -> int | None:
        self.sock.settimeout(max(timeout, 1e-4))
        try:
            data, peer = self.sock.recvfrom(65535)
        except (TimeoutError, OSError):
            return None
        text = data.decode(errors="replace")
        if peer[1] == self.addr[1] and _same_address(peer[0], self.addr[0]) \
                and text.startswith("flow-"):
            return int(text[5:]) & 0xFFFF
        return None


def ping(args: argparse.Namespace) -> int:
    pinger = _Pinger(args.dst)
    received = 0
    for seq in range(args.count):
        try:
            pinger.send(seq)
        except OSError as exc:  # no route: counts as lost, like ping's "Network unreachable"
            print(json.dumps({"sent": args.count, "received": received, "error": str(exc)}))
            return 1
        deadline = time.monotonic() + args.timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if pinger.receive(remaining) == seq:
                received += 1
                break
    print(json.dumps({"sent": args.count, "received": received}))
    return 0 if received == args.count else 1


def flow(args: argparse.Namespace) -> int:
    """Send every `interval` until stopped; count replies; lost = sent and never answered."""
    prober: _Pinger | _UdpFlow = _Pinger(args.dst) if args.proto == "icmp" else _UdpFlow(args.dst, args.port)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    sent: list[int] = []
    answered: set[int] = set()
    ready = Path(args.ready) if args.ready else None
    seq = 0
    next_send = time.monotonic()
    started = time.time()
    try:
        while args.count == 0 or seq < args.count:
            now = time.monotonic()
            if now >= next_send:
                try:
                    prober.send(seq)
                except OSError:  # e.g. route briefly gone: the packet is lost, keep going
                    pass
                sent.append(seq & 0xFFFF)
                seq += 1
                next_send += args.interval
            got = prober.receive(max(0.0, next_send - time.monotonic()))
            if got is not None:
                answered.add(got)
                if ready is not None and not ready.exists():
                    ready.write_text(str(os.getpid()))
    except _Stop:
        pass
    # Stop sending, then give in-flight packets a grace period to come back.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    outstanding = set(sent) - answered
    deadline = time.monotonic() + args.grace
    while outstanding and (remaining := deadline - time.monotonic()) > 0:
        got = prober.receive(remaining)
        if got is not None:
            answered.add(got)
            outstanding.discard(got)
    lost = [s for s in sent if s not in answered]
    print(json.dumps({"sent": len(sent), "received": len(sent) - len(lost), "lost": lost,
                      "seconds": round(time.time() - started, 3)}))
    return 0 if sent and not lost else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netprobe")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", action="append", required=True, help="repeat for more addresses")
    s.add_argument("--udp", type=int, action="append", default=[])
    s.add_argument("--tcp", type=int, action="append", default=[])
    s.add_argument("--log", required=True)
    s.add_argument("--ready", required=True)
    u = sub.add_parser("udp")
    u.add_argument("--dst", required=True)
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--src")
    u.add_argument("--spoof", action="store_true")
    u.add_argument("--payload", default="probe")
    u.add_argument("--timeout", type=float, default=1.0)
    t = sub.add_parser("tcp")
    t.add_argument("--dst", required=True)
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--timeout", type=float, default=1.0)
    i = sub.add_parser("ping")
    i.add_argument("--dst", required=True)
    i.add_argument("--count", type=int, default=1)
    i.add_argument("--timeout", type=float, default=1.0)
    f = sub.add_parser("flow")
    f.add_argument("--dst", required=True)
    f.add_argument("--proto", choices=("icmp", "udp"), default="icmp")
    f.add_argument("--port", type=int, default=5060)
    f.add_argument("--interval", type=float, default=0.05)
    f.add_argument("--count", type=int, default=0, help="0 = until SIGTERM")
    f.add_argument("--grace", type=float, default=1.0)
    f.add_argument("--ready", help="file created once the first reply came back")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"serve": serve, "udp": udp, "tcp": tcp, "ping": ping, "flow": flow}[args.cmd]
    try:
        return handler(args)
    except OSError as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
