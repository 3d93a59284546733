"""The committed JSON Schema matches the models, is valid draft-07, and agrees with the loader on
the shipped files and on typical mistakes (what an editor would flag)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator
from repo_kit import ROOT, TENANTS

from reconciler.repo.schema import SCHEMA_FILES, outdated_schemas, render, write_schemas
from reconciler.repo.yamlio import ParsedYaml, parse


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "schemas" / name).read_text())
    return loaded


def as_json(path: Path) -> Any:
    parsed = parse(path.read_bytes())
    assert isinstance(parsed, ParsedYaml)
    return json.loads(json.dumps(parsed.value, default=lambda v: v.isoformat()
                                 if isinstance(v, date) else str(v)))


def test_committed_schemas_are_current() -> None:
    stale = outdated_schemas(ROOT / "schemas")
    assert stale == [], f"run 'tunnelctl schema' and commit: {stale}"


def test_check_notices_a_hand_edit(tmp_path: Path) -> None:
    assert sorted(p.name for p in write_schemas(tmp_path)) == sorted(SCHEMA_FILES)
    assert outdated_schemas(tmp_path) == []
    (tmp_path / "tunnel.schema.json").write_text("{}\n")
    assert [p.name for p in outdated_schemas(tmp_path)] == ["tunnel.schema.json"]


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_schemas_are_draft_07(name: str) -> None:
    doc = schema(name)
    assert doc["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert "$defs" not in json.dumps(doc)
    Draft7Validator.check_schema(doc)
    assert render(SCHEMA_FILES[name]) == (ROOT / "schemas" / name).read_text()


@pytest.mark.parametrize("root", [TENANTS, ROOT / "examples" / "dual-stack"],
                         ids=["tenants", "dual-stack"])
def test_shipped_files_satisfy_the_schema(root: Path) -> None:
    tunnel = Draft7Validator(schema("tunnel.schema.json"))
    for path in root.glob("*/*.yaml"):
        assert list(tunnel.iter_errors(as_json(path))) == [], path
    gateway = Draft7Validator(schema("gateway.schema.json"))
    assert list(gateway.iter_errors(as_json(root / "gateway.yaml"))) == []
    # The repo's own copies (its modelines point at them) are current too.
    assert outdated_schemas(root / "schemas") == []


@pytest.mark.parametrize("change", [
    {"subnett": "10.20.0.4/30"}, {"name": "a;rm -rf /"}, {"status": "paused"},
    {"public_key": "short="}, {"persistent_keepalive": -1}, {"lans": "192.168.1.0/24"},
])
def test_the_schema_flags_typical_mistakes(change: dict[str, Any]) -> None:
    doc = as_json(TENANTS / "acme-voip" / "hq.yaml")
    doc.update(change)
    assert list(Draft7Validator(schema("tunnel.schema.json")).iter_errors(doc))
