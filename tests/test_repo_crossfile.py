"""Rules across files: unique subnets (revoked ones hold theirs for 30 days), unique keys, no
overlapping LANs/subnets, org/name equal to the path, and how problems decide which orgs can
still be applied. Also layouts, incremental loading and the overlap sweep against brute force."""

from __future__ import annotations

import os
from datetime import timedelta
from ipaddress import IPv4Network
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from repo_kit import GATEWAY_YAML, TODAY, at, key, load, one, tunnel_yaml

from reconciler.repo.state import ParseCache, SourceFile, load_files, load_repo

A, B, C = "acme/hq.yaml", "bluebird/main.yaml", "carrot/clinic.yaml"


def test_same_subnet_in_two_orgs_is_reported_at_both_files_naming_the_other() -> None:
    state = load({A: tunnel_yaml("acme", "hq", "10.20.0.4/30"),
                  B: tunnel_yaml("bluebird", "main", "10.20.0.4/30"),
                  C: tunnel_yaml("carrot", "clinic", "10.20.0.8/30")})
    pa, pb = one(state, A), one(state, B)
    assert (pa.line, pa.col) == (5, 9) and (pb.line, pb.col) == (5, 9)
    assert f"of {B}:5 (bluebird/main)" in pa.message and "uses the same addresses" in pa.message
    assert f"of {A}:5 (acme/hq)" in pb.message
    assert state.broken_orgs == {"acme", "bluebird"}
    assert [t.ident for t in state.tunnels] == ["carrot/clinic"]
    assert {t.ident for t in state.all_tunnels} == {"acme/hq", "bluebird/main", "carrot/clinic"}


def test_lan_overlapping_another_orgs_lan_names_file_and_line() -> None:
    state = load({A: tunnel_yaml("acme", "hq", "10.20.0.4/30", lans=("192.168.0.0/23",)),
                  B: tunnel_yaml("bluebird", "main", "10.20.0.8/30",
                                 lans=("172.16.0.0/24", "192.168.1.0/24"))})
    pa, pb = one(state, A), one(state, B)
    assert (pa.line, pa.col) == (7, 5) and (pb.line, pb.col) == (8, 5)
    assert f"overlaps LAN 192.168.1.0/24 of {B}:8" in pa.message
    assert f"overlaps LAN 192.168.0.0/23 of {A}:7" in pb.message
    assert "wrong customer" in pa.message


def test_lans_of_different_gateways_may_repeat() -> None:
    second = GATEWAY_YAML.replace("name: cloud-1", "name: cloud-2").replace(
        "YJZs8LdgZritEgpUMAnyB8xGXYMXCScV/v4DkPmJiyg=", key("gw2"))
    state = load({"gateways/cloud-2.yaml": second,
                  A: tunnel_yaml("acme", "hq", "10.20.0.4/30", lans=("192.168.0.0/24",)),
                  "acme/hq-backup.yaml": tunnel_yaml("acme", "hq-backup", "10.20.0.4/30",
                                                     lans=("192.168.0.0/24",),
                                                     gateway="cloud-2")})
    assert state.problems == ()
    assert len(state.tunnels) == 2


def test_the_same_public_key_in_two_orgs() -> None:
    shared = key("shared")
    state = load({A: tunnel_yaml("acme", "hq", "10.20.0.4/30", pubkey=shared),
                  B: tunnel_yaml("bluebird", "main", "10.20.0.8/30", pubkey=shared)})
    pa, pb = one(state, A), one(state, B)
    assert (pa.line, pa.col) == (4, 13) and (pb.line, pb.col) == (4, 13)
    assert f"also used by {B}:4" in pa.message and f"also used by {A}:4" in pb.message


def test_a_revoked_tunnel_holds_its_subnet_for_thirty_days() -> None:
    def state_with(days_ago: int):  # type: ignore[no-untyped-def]
        revoked = (TODAY - timedelta(days=days_ago)).isoformat()
        return load({A: tunnel_yaml("acme", "hq", "10.20.0.4/30", lans=("192.168.5.0/24",),
                                    extra=f"status: revoked\nrevoked_at: {revoked}\n"),
                     B: tunnel_yaml("bluebird", "main", "10.20.0.4/30",
                                    lans=("192.168.5.0/24",))})
    young = state_with(29)
    assert "revoked on 2026-05-17; its subnet stays reserved until 2026-06-16" in \
        one(young, B).message
    assert at(young, A)  # the conflict shows on both sides
    old = state_with(30)
    assert old.problems == ()  # subnet free again; a revoked tunnel's LAN never conflicts
    assert {t.ident for t in old.tunnels} == {"acme/hq", "bluebird/main"}


def test_disabled_tunnels_keep_their_addresses() -> None:
    state = load({A: tunnel_yaml("acme", "hq", "10.20.0.4/30", extra="status: disabled\n"),
                  B: tunnel_yaml("bluebird", "main", "10.20.0.4/30")})
    assert at(state, A) and at(state, B)


def test_duplicate_org_and_name() -> None:
    state = load({A: tunnel_yaml("acme", "hq", "10.20.0.4/30"),
                  "acme/hq2.yaml": tunnel_yaml("acme", "hq", "10.20.0.8/30",
                                               pubkey=key("other"))})
    messages = [p.message for p in at(state, "acme/hq2.yaml")]
    assert any("must equal the file name" in m for m in messages)
    assert any(f"org/name acme/hq is also used by {A}:2" in m for m in messages)


def test_a_broken_gateway_blocks_every_org() -> None:
    state = load({A: tunnel_yaml("acme", "hq", "10.20.0.4/30")},
                 gateway=GATEWAY_YAML.replace("pool: 10.20.0.0/16", "pool: 10.30.0.0/16"))
    p = one(state, "gateway.yaml")
    assert p.org is None and (p.line, p.col) == (7, 7) and "outside the pool" in p.message
    assert state.tunnels == () and at(state, A) == []  # no noise about the unknown gateway


def test_no_gateway_file_is_a_problem() -> None:
    state = load({A: tunnel_yaml("acme", "hq", "10.20.0.4/30")}, gateway=None)
    assert one(state, "gateway.yaml").message.startswith("no gateway file")
    assert state.tunnels == ()


def test_endpoint_inside_a_reserved_range_is_reported_in_the_gateway_file() -> None:
    gw = GATEWAY_YAML.replace("endpoint: 203.0.113.10:51821", "endpoint: 10.10.10.5:51821")
    p = one(load({}, gateway=gw), "gateway.yaml")
    assert (p.line, p.col) == (10, 5) and "contains the public endpoint 10.10.10.5" in p.message


def test_misplaced_and_misnamed_files() -> None:
    state = load({A: tunnel_yaml("acme", "hq", "10.20.0.4/30"),
                  "acme/site.yml": "org: acme\n", "stray.yaml": "x: 1\n",
                  "acme/deep/x.yaml": "x: 1\n", "README.md": "ignored", ".hidden/x.yaml": "x"})
    assert "rename it to site.yaml" in one(state, "acme/site.yml").message
    assert one(state, "stray.yaml").org is None
    assert one(state, "acme/deep/x.yaml").org == "acme"
    assert {p.file for p in state.problems} == {"acme/site.yml", "stray.yaml", "acme/deep/x.yaml"}


def test_tenants_folder_layout_ignores_other_files_of_a_bigger_repo() -> None:
    files = [SourceFile("gateway.yaml", GATEWAY_YAML.encode()),
             SourceFile("tenants/acme/hq.yaml", tunnel_yaml("acme", "hq", "10.20.0.4/30").encode()),
             SourceFile(".github/workflows/x.yaml", b"on: push"),
             SourceFile("docs/example.yaml", b"org: nope\n")]
    state = load_files(files, today=TODAY)
    assert state.problems == () and state.paths == {"acme/hq": "tenants/acme/hq.yaml"}


def test_symlinks_are_refused_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "acme").mkdir(parents=True)
    (root / "gateway.yaml").write_text(GATEWAY_YAML)
    secret = tmp_path / "secret.yaml"
    secret.write_text(tunnel_yaml("acme", "hq", "10.20.0.4/30"))
    os.symlink(secret, root / "acme" / "hq.yaml")
    state = load_repo(root, today=TODAY)
    assert "symlinks" in one(state, "acme/hq.yaml").message and state.all_tunnels == ()


def test_unchanged_files_are_not_parsed_again() -> None:
    files = [SourceFile("gateway.yaml", GATEWAY_YAML.encode(), "g1")] + [
        SourceFile(f"org{i}/t.yaml", tunnel_yaml(f"org{i}", "t", f"10.20.{i}.4/30").encode(),
                   f"blob{i}") for i in range(50)]
    cache = ParseCache()
    first = load_files(files, cache, TODAY)
    assert cache.misses == 51 and first.problems == ()
    files[8] = SourceFile("org7/t.yaml", tunnel_yaml("org7", "t", "10.20.0.4/30").encode(), "new")
    second = load_files(files, cache, TODAY)
    # Parsed once: the patch of the last load meets a finding and the full load that follows
    # finds the changed file in the cache (one hit more than the 50 unchanged files).
    assert cache.misses == 52 and cache.hits == 51
    assert {p.file for p in second.problems} == {"org0/t.yaml", "org7/t.yaml"}
    assert len(cache) == 51  # the replaced blob is forgotten


# ---- the overlap sweep against brute force --------------------------------------------------

lan_blocks = st.builds(lambda start, plen: IPv4Network((0xC0A80000 + (start << 6), plen),
                                                       strict=False),
                       st.integers(0, 63), st.integers(22, 27))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(lan_blocks, max_size=3), min_size=2, max_size=7))
def test_every_file_in_a_lan_overlap_gets_a_problem(lan_sets: list[list[IPv4Network]]) -> None:
    files = {f"o{i}/t.yaml": tunnel_yaml(f"o{i}", "t", f"10.20.{i}.4/30",
                                         lans=tuple(str(n) for n in lans))
             for i, lans in enumerate(lan_sets)}
    state = load(files)
    own_ok = [all(not a.overlaps(b) for j, a in enumerate(lans) for b in lans[:j])
              for lans in lan_sets]
    expected = set()
    for i, lans in enumerate(lan_sets):
        for j, others in enumerate(lan_sets):
            if i != j and own_ok[i] and own_ok[j] and any(a.overlaps(b) for a in lans
                                                            for b in others):
                expected.add(f"o{i}/t.yaml")
    flagged = {p.file for p in state.problems if "overlaps" in p.message and "of o" in p.message
               or "uses the same addresses" in p.message}
    assert flagged == expected
    for i, ok in enumerate(own_ok):
        if not ok:
            assert any("of this tunnel" in p.message for p in at(state, f"o{i}/t.yaml"))
