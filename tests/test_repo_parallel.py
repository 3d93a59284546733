"""A cold load of a big repo may fork a helper to parse half the files (`jobs=2`): the result
must be exactly the serial one, problems and positions included."""

from __future__ import annotations

from repo_kit import GATEWAY_YAML, TODAY, tunnel_yaml

from reconciler.repo.parallel import MIN_FILES
from reconciler.repo.state import ParseCache, SourceFile, load_files


def big_repo() -> list[SourceFile]:
    files = [SourceFile("gateway.yaml", GATEWAY_YAML.encode())]
    for i in range(MIN_FILES + 200):
        text = tunnel_yaml(f"org{i // 4}", f"t{i % 4}", f"10.20.{i // 64}.{(i % 64) * 4}/30")
        if i % 97 == 0:
            text = text.replace("lans: []", "lans: [8.8.8.0/24]")  # schema problem
        if i % 211 == 0:
            text = "org: [broken\n"  # YAML problem
        files.append(SourceFile(f"org{i // 4}/t{i % 4}.yaml", text.encode()))
    return files


def test_forked_parse_gives_the_serial_result() -> None:
    files = big_repo()
    serial = load_files(files, ParseCache(), TODAY, jobs=1)
    cache = ParseCache()
    forked = load_files(files, cache, TODAY, jobs=2)
    assert cache.misses == len({f.data for f in files})  # identical files are checked once
    assert forked.problems == serial.problems and len(serial.problems) > 20
    assert forked.tunnels == serial.tunnels and forked.broken_orgs == serial.broken_orgs
    assert any(p.message.startswith("lans[0]") and (p.line, p.col) == (6, 8)
               for p in forked.problems)
