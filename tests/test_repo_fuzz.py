"""Fuzzing the loader: arbitrary bytes, text and mutated copies of the shipped files never raise
and always yield problems with a location; valid generated tunnels survive dump -> load."""

from __future__ import annotations

import base64
from datetime import date
from ipaddress import IPv4Network, IPv6Network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from repo_kit import TENANTS, TODAY

from reconciler.repo.fileload import check_document
from reconciler.repo.model import Gateway, Tunnel, TunnelStatus
from reconciler.repo.state import RepoState, SourceFile, load_files
from reconciler.repo.yamlio import dump_document

SHIPPED = {p.relative_to(TENANTS).as_posix(): p.read_bytes() for p in TENANTS.rglob("*.yaml")}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def editor_lines(data: bytes) -> list[str]:
    """The file's lines as an editor or git diff shows them: split at a newline only."""
    return data.decode("utf-8", "replace").split("\n")


def assert_located(state: RepoState, files: dict[str, bytes]) -> None:
    """Every problem names a line and column that exist in its file as an editor shows it."""
    for p in state.problems:
        assert p.line >= 1 and p.col >= 1, p
        assert p.message and "internal error" not in p.message, p
        if p.file not in files:  # a repo-level problem names no file of ours
            assert (p.line, p.col) == (1, 1), p
            continue
        lines = editor_lines(files[p.file])
        assert p.line <= len(lines), p
        assert p.col <= len(lines[p.line - 1]) + 1, p


def load_with(path: str, data: bytes) -> tuple[RepoState, dict[str, bytes]]:
    files = dict(SHIPPED)
    files[path] = data
    return load_files([SourceFile(k, v) for k, v in files.items()], today=TODAY), files


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_as_a_tunnel_file(data: bytes) -> None:
    state, files = load_with("acme-voip/hq.yaml", data)
    assert_located(state, files)


@FUZZ
@given(st.text(max_size=400))
def test_random_text_as_the_gateway_file(text: str) -> None:
    state, files = load_with("gateway.yaml", text.encode())
    assert_located(state, files)
    if state.problems:
        assert state.tunnels == ()


YAML_BITS = [b":", b"-", b"[", b"]", b"{", b"}", b"&a", b"*a", b"!", b"|", b">", b"'", b'"',
             b"%", b"@", b"\t", b"\n", b"#", b",", b"?", b"  ", b"\xff", b"\x00", b"0.0.0.0/0",
             b"revoked_at: 2026-13-01\n", b"status: revoked\n", b"<<: {a: 1}\n",
             # line breaks to YAML that an editor may not show: problems must name its lines
             b"\r", b"\r\n", "\x85".encode(), "\u2028".encode(), "\u2029".encode()]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(st.sampled_from(sorted(SHIPPED)))
    data = bytearray(SHIPPED[path])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        bit = draw(st.sampled_from(YAML_BITS))
        if action == "insert":
            data[at:at] = bit
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:
            data[at:at + len(bit)] = bit
    return path, bytes(data)


@FUZZ
@given(mutated())
def test_mutated_shipped_files(case: tuple[str, bytes]) -> None:
    state, files = load_with(*case)
    assert_located(state, files)
    lines = editor_lines(case[1])
    for kind in (Tunnel, Gateway):
        check = check_document(case[1], kind)
        assert (check.model is None) == bool(check.issues)
        for issue in check.issues:
            assert 1 <= issue.line <= len(lines), issue
            assert 1 <= issue.col <= len(lines[issue.line - 1]) + 1, issue


names = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
notes = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))
                | st.sampled_from(" #:'\""), max_size=60)


@st.composite
def tunnels(draw: st.DrawFn) -> Tunnel:
    status = draw(st.sampled_from(list(TunnelStatus)))
    return Tunnel(
        org=draw(names), name=draw(names), gateway=draw(names),
        public_key=base64.b64encode(draw(st.binary(min_size=32, max_size=32))).decode(),
        subnet=IPv4Network((0x0A140000 + 4 * draw(st.integers(1, 16383)), 30)),
        lans=tuple(IPv4Network(f"192.168.{i}.0/24")
                   for i in draw(st.lists(st.integers(0, 255), unique=True, max_size=3))),
        subnet6=draw(st.none() | st.integers(1, 65535).map(
            lambda i: IPv6Network(f"fd42:4242:1:{i:x}::/64"))),
        lans6=tuple(IPv6Network(f"fd00:{i:x}::/48")
                    for i in draw(st.lists(st.integers(0, 65535), unique=True, max_size=3))),
        status=status,
        revoked_at=draw(st.dates(date(2000, 1, 1), date(2099, 12, 31)))
        if status is TunnelStatus.revoked else None,
        services=draw(st.none() | st.lists(st.sampled_from(["sip", "rtp"]), max_size=2)
                      .map(tuple)),
        persistent_keepalive=draw(st.integers(0, 65535)),
        psk_rotation=draw(st.integers(0, 10**9)),
        notes=draw(notes),
    )


@settings(max_examples=200, deadline=None)
@given(tunnels())
def test_valid_tunnels_round_trip_load_dump_load(tunnel: Tunnel) -> None:
    text = dump_document(tunnel.model_dump(exclude_none=True))
    loaded = check_document(text.encode(), Tunnel)
    assert loaded.issues == () and loaded.model == tunnel, text
    assert dump_document(loaded.model.model_dump(exclude_none=True)) == text


@pytest.mark.parametrize("text", ["\ufeffbom", "  lead", "trail  ", "- x", "{a",
                                  "#c", "é\u00a0x", "\U0001F600", "yes", "010", "2026-01-01"])
def test_awkward_notes_round_trip(text: str) -> None:
    tunnel = Tunnel(org="a", name="b", gateway="c", public_key=base64.b64encode(b"k" * 32).decode(),
                    subnet=IPv4Network("10.20.0.4/30"), notes=text)
    loaded = check_document(dump_document(tunnel.model_dump(exclude_none=True)).encode(), Tunnel)
    assert loaded.model == tunnel


@pytest.mark.parametrize("text", ["\n", "a\n\nb\n", "multi\nline", "a\rb", "a\u2028b", "a\u2029b"])
def test_notes_are_one_line(text: str) -> None:
    # Notes are copied into config-file comments: a line break would end the comment.
    with pytest.raises(ValueError, match="line break"):
        Tunnel(org="a", name="b", gateway="c", public_key=base64.b64encode(b"k" * 32).decode(),
               subnet=IPv4Network("10.20.0.4/30"), notes=text)


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\t", "\x7f", "\x85", "\x9f"])
def test_control_characters_in_notes_are_refused(char: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        Tunnel(org="a", name="b", gateway="c", public_key=base64.b64encode(b"k" * 32).decode(),
               subnet=IPv4Network("10.20.0.4/30"), notes=f"bad{char}note")
