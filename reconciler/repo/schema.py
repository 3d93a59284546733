"""JSON Schema for the repo files, generated from the pydantic models.

Editors (yaml-language-server, via the `# yaml-language-server: $schema=...` header) and CI use
these files. They are written as draft-07 (`definitions`, not `$defs`) because that is the
draft yaml-language-server understands fully. A test keeps the committed files current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from reconciler.repo.model import Gateway, Tunnel

DRAFT_07 = "http://json-schema.org/draft-07/schema#"
SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "gateway.schema.json": Gateway,
    "tunnel.schema.json": Tunnel,
}


def schema_for(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(ref_template="#/definitions/{model}", mode="validation")
    definitions = raw.pop("$defs", None)
    out: dict[str, Any] = {"$schema": DRAFT_07}
    out.update(raw)
    if definitions:
        out["definitions"] = definitions
    return out


def render(model: type[BaseModel]) -> str:
    return json.dumps(schema_for(model), indent=2, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, model in SCHEMA_FILES.items():
        target = directory / filename
        text = render(model)
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            written.append(target)
    return written


def outdated_schemas(directory: Path) -> list[Path]:
    """Schema files that are missing or differ from what the models generate."""
    stale = []
    for filename, model in SCHEMA_FILES.items():
        target = directory / filename
        if not target.exists() or target.read_text(encoding="utf-8") != render(model):
            stale.append(target)
    return stale
