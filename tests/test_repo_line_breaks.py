"""Line numbers are the ones an editor and `git diff` show: lines end at "\\n" (or "\\r\\n").

YAML 1.1 (libyaml) also ends a line at a lone "\\r", U+0085, U+2028 and U+2029, which editors
show inside one line. A file holding one is refused at the editor's line and column: read as
YAML it would differ from how it looks (a "comment" could carry a key past review), and every
later line number would name another line.
"""

from __future__ import annotations

import pytest
from repo_kit import GATEWAY_YAML, load, tunnel_yaml

from reconciler.repo.fileload import check_document
from reconciler.repo.model import Gateway, Tunnel

HIDDEN = {"\r": "carriage return", "\x85": "U+0085", "\u2028": "U+2028", "\u2029": "U+2029"}
TUNNEL = "acme-voip/hq.yaml"
TUNNEL_YAML = tunnel_yaml("acme-voip", "hq", "10.20.0.4/30", lans=("192.168.10.0/24",))
KINDS: dict[str, tuple[str, type[Tunnel | Gateway]]] = {
    TUNNEL: (TUNNEL_YAML, Tunnel), "gateway.yaml": (GATEWAY_YAML, Gateway)}
SMUGGLED_KEY = "public_key: YJZs8LdgZritEgpUMAnyB8xGXYMXCScV/v4DkPmJiyg="


def with_comment(text: str, comment: str, at_line: int = 3) -> str:
    lines = text.split("\n")
    return "\n".join(lines[: at_line - 1] + [comment] + lines[at_line - 1:])


def load_as(path: str, text: str) -> tuple[str, ...]:
    """Load the shipped-like repo with `text` at `path`; its problems as file:line:col: text."""
    if path == "gateway.yaml":
        state = load({TUNNEL: TUNNEL_YAML}, gateway=text)
    else:
        state = load({path: text})
    return tuple(str(p) for p in state.problems if p.file == path)


@pytest.mark.parametrize("path", list(KINDS))
@pytest.mark.parametrize("char", list(HIDDEN))
def test_a_comment_holding_a_hidden_line_break_is_refused_at_the_editors_line(
        path: str, char: str) -> None:
    # To YAML this "comment" ends at `char` and a second public_key follows it.
    text, kind = KINDS[path]
    data = with_comment(text, f"# moved{char}{SMUGGLED_KEY}")
    problems = load_as(path, data)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:3:8: "), problems
    assert HIDDEN[char] in problems[0] and "line break" in problems[0]
    check = check_document(data.encode(), kind)
    assert check.model is None and [(i.line, i.col) for i in check.issues] == [(3, 8)]


@pytest.mark.parametrize("path", list(KINDS))
def test_crlf_in_a_comment_is_a_line_break_to_yaml_and_editors_alike(path: str) -> None:
    text, _ = KINDS[path]
    data = with_comment(text, f"# moved\r\n{SMUGGLED_KEY}")
    editor_lines = data.split("\n")
    second = [n for n, line in enumerate(editor_lines, 1) if line.startswith("public_key:")][1]
    problems = load_as(path, data)
    expected = (f"{path}:{second}:1: invalid YAML: duplicate key 'public_key': YAML keeps only "
                "the last one; remove one of them")
    assert problems == (expected,)


@pytest.mark.parametrize("path", list(KINDS))
@pytest.mark.parametrize("char", list(HIDDEN))
def test_a_file_with_hidden_line_endings_is_refused_at_the_end_of_its_one_editor_line(
        path: str, char: str) -> None:
    text, kind = KINDS[path]
    data = text.replace("\n", char)
    problems = load_as(path, data)
    first_line = text.split("\n")[0]
    assert len(problems) == 1 and problems[0].startswith(f"{path}:1:{len(first_line) + 1}: ")
    assert HIDDEN[char] in problems[0]
    assert check_document(data.encode(), kind).model is None


@pytest.mark.parametrize("path", list(KINDS))
def test_a_file_with_crlf_line_endings_loads_as_the_same_model(path: str) -> None:
    text, kind = KINDS[path]
    assert load_as(path, text.replace("\n", "\r\n")) == ()
    crlf = check_document(text.replace("\n", "\r\n").encode(), kind)
    assert crlf.issues == () and crlf.model == check_document(text.encode(), kind).model


@pytest.mark.parametrize("path", list(KINDS))
def test_a_problem_after_crlf_lines_names_the_editors_line_and_column(path: str) -> None:
    text, _ = KINDS[path]
    # The subnet (tunnel) or pool (gateway) is refused at its value, on the same line either way.
    field = "subnet: " if path == TUNNEL else "pool: "
    line = next(n for n, s in enumerate(text.split("\n"), 1) if s.startswith(field))
    broken = text.replace(f"\n{field}", f"\n{field}10.20.0.3/33 #")
    (lf,) = load_as(path, broken)
    (crlf,) = load_as(path, broken.replace("\n", "\r\n"))
    assert lf.startswith(f"{path}:{line}:{len(field) + 1}: ")
    assert crlf == lf


@pytest.mark.parametrize("char", list(HIDDEN))
def test_a_hidden_line_break_inside_a_quoted_value_is_refused_too(char: str) -> None:
    data = TUNNEL_YAML + f'notes: "front{char}desk"\n'
    line = TUNNEL_YAML.count("\n") + 1
    col = len('notes: "front') + 1
    (problem,) = load_as(TUNNEL, data)
    assert problem.startswith(f"{TUNNEL}:{line}:{col}: "), problem
    assert HIDDEN[char] in problem


def test_the_fuzzers_gateway_file_is_refused_at_its_lone_carriage_return() -> None:
    # Hypothesis found it: libyaml counted "\r" and U+0085 as two lines of a file with no "\n".
    problems = load_as("gateway.yaml", "\r\x850")
    assert len(problems) == 1 and problems[0].startswith("gateway.yaml:1:1: ")
    assert "carriage return" in problems[0]


@pytest.mark.parametrize(("text", "col"), [("{", 2), ("org: [", 7), ("a: 'x", 6)])
def test_an_error_at_the_end_of_a_file_without_a_final_newline_is_on_its_last_line(
        text: str, col: int) -> None:
    # libyaml reports the end of the stream on a line after the last, which no editor has.
    (problem,) = load_as(TUNNEL, TUNNEL_YAML + text)
    line = TUNNEL_YAML.count("\n") + 1
    assert problem.startswith(f"{TUNNEL}:{line}:{col}: "), problem
