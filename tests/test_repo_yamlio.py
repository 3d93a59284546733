"""YAML I/O: the fast libyaml reader agrees with ruamel (which writes the files), survives
hostile input, and round-trip edits keep comments and key order."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from repo_kit import TENANTS
from ruamel.yaml import YAML

from reconciler.repo.fileload import check_document
from reconciler.repo.model import Tunnel
from reconciler.repo.yamlio import ParsedYaml, YamlProblem, parse, position


def ruamel_load(text: str) -> Any:
    return YAML(typ="rt").load(io.StringIO(text))


def plain(v: Any) -> Any:
    """Reduce both loaders' types to comparable plain values."""
    if isinstance(v, dict):
        return {plain(k): plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return ("int", int(v))
    if isinstance(v, float):
        return ("float", repr(float(v)))
    if isinstance(v, dt.datetime):
        aware = v.tzinfo is not None
        return ("datetime", v.astimezone(dt.UTC).replace(tzinfo=None) if aware
                else dt.datetime(*v.timetuple()[:6], v.microsecond), aware)
    if isinstance(v, str):
        return str(v)
    return v


@pytest.mark.parametrize("scalar", [
    "on", "off", "yes", "no", "y", "true", "False", "~", "null", "", "010", "0o10", "0x1f",
    "0b11", "1_000", "1:30", "-12", "+3", "1.5", ".inf", "2026-01-31", "2026-01-31T10:00:00Z",
    "2026-01-31 23:30:00-05:00", "2026-1-2 1:00:00", "'quoted'", "\"5060\"", "10.20.0.4/30",
])
def test_both_loaders_read_scalars_the_same(scalar: str) -> None:
    text = f"v: {scalar}\n"
    fast = parse(text.encode())
    assert isinstance(fast, ParsedYaml)
    assert plain(fast.value) == plain(ruamel_load(text))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(alphabet="0123456789-+_.:eExXoObB tTfFnNyYsZ~", min_size=1, max_size=12))
def test_both_loaders_agree_on_generated_plain_scalars(scalar: str) -> None:
    text = f"v: {scalar}\n"
    try:
        slow = ruamel_load(text)
    except Exception:  # noqa: BLE001
        return  # not a YAML document for ruamel either
    fast = parse(text.encode())
    assert isinstance(fast, ParsedYaml) and plain(fast.value) == plain(slow)


@pytest.mark.parametrize("when", ["2026-01-31", "2026-01-31T10:00:00Z",
                                  "2026-01-31 23:30:00-05:00"])
def test_revoked_at_is_the_same_date_through_either_loader(when: str) -> None:
    text = (TENANTS / "acme-voip" / "hq.yaml").read_text().replace(
        "status: active", f"status: revoked\nrevoked_at: {when}")
    fast = check_document(text.encode(), Tunnel).model
    slow = Tunnel.model_validate(ruamel_load(text))
    assert fast is not None and fast == slow
    assert fast.revoked_at == (dt.date(2026, 2, 1) if "-05:00" in when else dt.date(2026, 1, 31))


def test_positions_of_keys_values_and_list_items() -> None:
    parsed = parse((TENANTS / "acme-voip" / "hq.yaml").read_bytes())
    assert isinstance(parsed, ParsedYaml)
    assert position(parsed.node, ("subnet",)) == (6, 9)
    assert position(parsed.node, ("subnet",), key=True) == (6, 1)
    assert position(parsed.node, ("lans", 0)) == (8, 5)
    assert position(parsed.node, ("nope", 3)) == (2, 1)  # missing: the mapping's start


def test_deep_nesting_cannot_crash_the_process() -> None:
    # libyaml's composer recursed without limit in C: this input used to segfault Python.
    code = ("from reconciler.repo.yamlio import parse\n"
            "for bomb in (b'[' * 200000, b'- ' * 200000 + b'x', b'{a: ' * 100000):\n"
            "    print(parse(bomb).message)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("nested deeper than 64 levels") == 3


def test_a_file_just_over_the_size_limit() -> None:
    problem = parse(b"#" * (1 << 20) + b"\n")
    assert isinstance(problem, YamlProblem) and (problem.line, problem.col) == (1, 1)


