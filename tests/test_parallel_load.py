"""A cold `load_repo(jobs=2)` lists the folder, forks a helper that reads and parses files from
the end down and streams the values back in chunks while this process works from the start up:
whatever the tree holds and whatever happens to the helper (it dies, sends garbage, fails on a
file, is slow), the result is exactly jobs=1's."""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from repo_kit import GATEWAY_YAML, TODAY, tunnel_yaml

from reconciler.repo import parallel, parsecache
from reconciler.repo.fileload import FileCheck, check_document
from reconciler.repo.layout import place, read_capped, scan_dir
from reconciler.repo.model import Gateway, Tunnel
from reconciler.repo.parsecache import ParseCache
from reconciler.repo.repostate import RepoState
from reconciler.repo.state import load_files, load_repo
from reconciler.repo.yamlio import MAX_FILE_BYTES, YamlProblem

KINDS = ["valid", "valid", "valid", "same_subnet", "bad_yaml", "schema", "empty", "non_utf8",
         "too_big", "a_list", "symlink", "fifo", "yml", "hidden", "too_deep", "not_yaml",
         "wrong_org"]


def write_entry(root: Path, tenants: bool, i: int, kind: str) -> None:
    org, name = f"org{i % 5}", f"t{i}"
    folder = root / "tenants" / org if tenants else root / org
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    subnet = f"10.20.{i // 64}.{(i % 64) * 4}/30"
    text: str | bytes = tunnel_yaml(org, name, subnet)
    if kind == "same_subnet":
        text = tunnel_yaml(org, name, "10.20.0.0/30")
    elif kind == "bad_yaml":
        text = "org: [broken\n"
    elif kind == "schema":
        text = tunnel_yaml(org, name, subnet, lans=("8.8.8.0/24",))
    elif kind == "empty":
        text = b""
    elif kind == "non_utf8":
        text = b"org: \xff\xfe\n"
    elif kind == "too_big":
        text = b"#" * (MAX_FILE_BYTES + 1)
    elif kind == "a_list":
        text = "- org\n- name\n"
    elif kind == "wrong_org":
        text = tunnel_yaml("other", name, subnet)
    elif kind == "symlink":
        path.symlink_to(root / "gateway.yaml")
        return
    elif kind == "fifo":
        os.mkfifo(path)
        return
    elif kind == "yml":
        path = path.with_suffix(".yml")
    elif kind == "hidden":
        path = folder / f".{name}.yaml"
    elif kind == "too_deep":
        path = folder / "sub" / "deeper" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
    elif kind == "not_yaml":
        path = path.with_suffix(".txt")
    path.write_bytes(text.encode() if isinstance(text, str) else text)


def make_tree(root: Path, tenants: bool, kinds: list[str], gateway: str | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if gateway is not None:
        (root / "gateway.yaml").write_text(gateway)
    for i, kind in enumerate(kinds):
        write_entry(root, tenants, i, kind)
    return root


def assert_same(forked: object, serial: object) -> None:
    if isinstance(forked, RepoState) and isinstance(serial, RepoState):
        assert forked.problems == serial.problems  # file, line, col, message and org
    assert forked == serial


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Fork even for small trees, in small chunks; returns the pids of the helpers forked."""
    monkeypatch.setattr(parallel, "MIN_FILES", 1)
    monkeypatch.setattr(parsecache, "MIN_PARALLEL_FILES", 1)
    monkeypatch.setattr(parallel, "CHUNK", 3)
    pids: list[int] = []
    real_fork = os.fork

    def counted() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counted)
    return pids


@pytest.fixture
def slow_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process checks slowly (1 ms a file), so that the helper does most of the files
    and sends many chunks, whatever the machine's load."""
    me, real = os.getpid(), check_document

    def slow(*args: Any) -> Any:
        if os.getpid() == me:
            time.sleep(0.001)
        return real(*args)

    monkeypatch.setattr(parallel, "check_document", slow)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tenants=st.booleans(),
       kinds=st.lists(st.sampled_from(KINDS), min_size=0, max_size=24),
       gateway=st.sampled_from([GATEWAY_YAML, GATEWAY_YAML, "gateway: [\n", None]))
def test_a_forked_cold_load_of_any_tree_is_the_serial_load(
        forks: list[int], tenants: bool, kinds: list[str], gateway: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = make_tree(Path(tmp) / "repo", tenants, kinds, gateway)
        serial = load_repo(root, ParseCache(), TODAY, jobs=1)
        before = len(forks)
        cache = ParseCache()
        forked = load_repo(root, cache, TODAY, jobs=2)
        assert_same(forked, serial)
        files, _ = scan_dir(root)
        tenants_dir = any(f.path.startswith("tenants/") for f in files)
        placed = [place(f.path, tenants_dir) for f in files]
        assert len(forks) == before + any(p and p.kind != "misplaced" for p in placed)
        again = load_repo(root, cache, TODAY, jobs=2)  # warm: the cache the forked load filled
        assert_same(again, serial)


BAD_EVERY = {7: "bad_yaml", 11: "schema", 13: "empty", 17: "non_utf8", 19: "a_list",
             23: "same_subnet", 29: "symlink", 31: "wrong_org"}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    kinds = ["valid"] * 60
    for every, kind in BAD_EVERY.items():
        kinds[every] = kind
    return make_tree(tmp_path / "repo", True, kinds, GATEWAY_YAML)


Loader = Callable[[Path, int], object]


def from_disk(root: Path, jobs: int) -> RepoState:
    return load_repo(root, ParseCache(), TODAY, jobs=jobs)


def from_files(root: Path, jobs: int) -> RepoState:
    files, _ = scan_dir(root)
    return load_files(files, ParseCache(), TODAY, jobs=jobs)


def items_of(root: Path) -> list[tuple[str, bytes, type[Tunnel | Gateway]]]:
    files, _ = scan_dir(root)
    return [(os.path.join(root, f.path), f.data, Gateway if f.path == "gateway.yaml" else Tunnel)
            for f in files]


def checks_of_bytes(root: Path, jobs: int) -> list[FileCheck]:
    """parallel.check_all itself (load_files' path), which must give every file's check."""
    return parallel.check_all([(data, kind) for _, data, kind in items_of(root)], jobs)


def checks_of_paths(root: Path, jobs: int) -> list[tuple[bytes, FileCheck | None]]:
    """parallel.read_and_check itself (load_repo's path), against a serial read and check."""
    items = items_of(root)
    if jobs == 1:
        return [(read_capped(path), check_document(data, kind)) for path, data, kind in items]
    return parallel.read_and_check([(path, kind) for path, _, kind in items], jobs)


LOADERS = pytest.mark.parametrize("loader", [from_disk, from_files, checks_of_bytes,
                                             checks_of_paths])


@LOADERS
def test_the_helpers_values_are_used(forks: list[int], slow_parent: None, tree: Path,
                                     loader: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    """Proof that the streamed chunks are what the load uses (so the tests below can fail)."""
    monkeypatch.setattr(parallel, "_values_only", lambda data: YamlProblem(1, 1, "from child"))
    result = loader(tree, 2)
    assert forks and len(marked_by_child(result)) > 30


def marked_by_child(result: object) -> set[str | int]:
    if isinstance(result, RepoState):
        return {p.file for p in result.problems if p.message == "from child"}
    assert isinstance(result, list)
    checks = [r[1] if isinstance(r, tuple) else r for r in result]
    return {i for i, c in enumerate(checks) if c and c.issues and c.issues[0].message == "from child"}


def calls_then(n: int, then: Callable[[], Any], real: Callable[..., Any]) -> Callable[..., Any]:
    count = iter(range(1 << 30))

    def wrapped(*args: Any) -> Any:
        if next(count) == n:
            return then()
        return real(*args)

    return wrapped


def exit_now() -> Any:
    os._exit(0)


def fail() -> Any:
    raise ValueError("no")


@LOADERS
@pytest.mark.parametrize("after", [0, 1, 3, 4, 20])
def test_a_helper_that_dies_mid_stream_changes_nothing(
        forks: list[int], slow_parent: None, tree: Path, loader: Loader, after: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    serial = loader(tree, 1)
    # The helper exits while parsing its file number `after` (CHUNK is 3: after one chunk).
    monkeypatch.setattr(parallel, "_values_only",
                        calls_then(after, exit_now, parallel._values_only))
    assert_same(loader(tree, 2), serial)
    assert forks


@LOADERS
def test_files_that_fail_in_the_helper_are_done_here(
        forks: list[int], slow_parent: None, tree: Path, loader: Loader,
        monkeypatch: pytest.MonkeyPatch) -> None:
    serial = loader(tree, 1)
    real = parallel._values_only
    monkeypatch.setattr(parallel, "_values_only",
                        lambda data: fail() if b"t4" in data else real(data))
    assert_same(loader(tree, 2), serial)
    # ... and the helper goes on with the next files
    monkeypatch.setattr(parallel, "_values_only",
                        lambda data: fail() if b"t4" in data else YamlProblem(1, 1, "from child"))
    assert len(marked_by_child(loader(tree, 2))) > 30


class Lying(bytes):
    def __len__(self) -> int:  # the header announces more than is sent, then the helper ends
        return super().__len__() + 100


def garbled(blob: bytes, message: Any) -> bytes:
    return b"\x80\x05garbage" + blob[10:]


def truncated(blob: bytes, message: Any) -> bytes:
    return Lying(blob)


def half(blob: bytes, message: Any) -> bytes:
    return blob[: len(blob) // 2]


def short(blob: bytes, message: Any) -> bytes:
    start, sent = message
    return pickle.dumps((start, sent[:-1]))


def long(blob: bytes, message: Any) -> bytes:
    start, sent = message
    return pickle.dumps((start, sent + sent))


def skipped(blob: bytes, message: Any) -> bytes:
    start, sent = message
    return pickle.dumps((start + 1, sent))


def not_a_chunk(blob: bytes, message: Any) -> bytes:
    return pickle.dumps({"start": 0})


def wrong_values(blob: bytes, message: Any) -> bytes:
    start, sent = message
    return pickle.dumps((start, [("x", 1)] * len(sent)))


@LOADERS
@pytest.mark.parametrize("spoil", [garbled, truncated, half, short, long, skipped, not_a_chunk,
                                   wrong_values])
@pytest.mark.parametrize("message_no", [0, 2])
def test_a_spoiled_chunk_changes_nothing(
        forks: list[int], slow_parent: None, tree: Path, loader: Loader, message_no: int,
        spoil: Callable[[bytes, Any], bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    serial = loader(tree, 1)
    count = iter(range(1 << 30))

    def dumps(message: Any, protocol: int | None = None) -> bytes:
        blob = pickle.dumps(message, protocol=protocol)
        return spoil(blob, message) if next(count) == message_no else blob

    monkeypatch.setattr(parallel, "pickle", SimpleNamespace(
        dumps=dumps, loads=pickle.loads, HIGHEST_PROTOCOL=pickle.HIGHEST_PROTOCOL))
    assert_same(loader(tree, 2), serial)
    assert forks


@LOADERS
def test_a_slow_helper_is_overtaken(forks: list[int], tree: Path, loader: Loader,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """This process goes on past the files the helper has not sent yet, and does them."""
    serial = loader(tree, 1)
    real = parallel._values_only

    def slow(data: bytes) -> Any:
        time.sleep(0.05)
        return real(data)

    monkeypatch.setattr(parallel, "_values_only", slow)
    assert_same(loader(tree, 2), serial)
    assert forks


def test_a_file_that_vanishes_after_the_listing_is_an_error_as_before(
        forks: list[int], tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tree / "tenants" / "org1" / "t1.yaml"
    real_read = read_capped

    def read(path: str) -> bytes:
        if path == os.fspath(victim):
            raise FileNotFoundError(path)
        return real_read(path)

    monkeypatch.setattr(parallel, "read_capped", read)
    with pytest.raises(FileNotFoundError):
        load_repo(tree, ParseCache(), TODAY, jobs=2)


def test_the_parent_waits_for_its_helper_and_closes_its_pipes(forks: list[int],
                                                              tree: Path) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    load_repo(tree, ParseCache(), TODAY, jobs=2)
    assert len(os.listdir("/proc/self/fd")) == fds
    for pid in forks:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie left behind

