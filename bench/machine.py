"""Where a benchmark ran: CPU, cores, kernel, memory, tool versions, date."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
        return f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def machine_info() -> dict[str, str]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _mem_total(),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "wireguard-go": _first_line(["wireguard-go", "--version"]),
        "wg": _first_line(["wg", "--version"]),
        "nft": _first_line(["nft", "--version"]),
        "ip": _first_line(["ip", "-V"]),
        "git": _first_line(["git", "--version"]),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
