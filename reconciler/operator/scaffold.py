"""`tunnelctl init`: the files of a new, standalone config repo.

A config repo is owned by ops, not by this project: gateway.yaml at its root, one
`<org>/<tunnel>.yaml` per tunnel, the JSON Schemas its editor modelines point at, a pre-commit
config using this project as a hook repository, and GitHub workflows that install one pinned
tunnelctl commit from its hash-checked locks. Everything is rendered and checked in memory
first; nothing is written when a value is wrong or a file already exists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path

from pydantic import ValidationError

from reconciler.repo.model import Gateway
from reconciler.repo.schema import SCHEMA_FILES, render
from reconciler.repo.state import SourceFile, load_files
from reconciler.repo.yamlio import write_atomic

# The pin is pasted into YAML and shell lines: only these shapes are accepted, so no value can
# add a key, a step or an expression to a generated file.
REPOSITORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
REV_RE = re.compile(r"^[0-9a-f]{40}$")
URL_RE = re.compile(r"^[A-Za-z0-9+:/@._~%-]{1,500}$")

TEMPLATES = {
    "gateway.yaml": "gateway.yaml.j2",
    ".pre-commit-config.yaml": "pre-commit-config.yaml.j2",
    ".github/workflows/validate.yml": "validate.yml.j2",
    ".github/workflows/pr-plan.yml": "pr-plan.yml.j2",
    "README.md": "README.md.j2",
}


class ScaffoldError(Exception):
    """The repo cannot be made; the message says why. Nothing was written."""


@dataclass(frozen=True)
class GatewaySpec:
    name: str
    endpoint: str
    address: str = "10.20.0.1/16"
    pool: str | None = None  # default: the address's network
    interface: str = "wg1"
    listen_port: int = 51821
    reserved: Sequence[str] = ()
    infra_interfaces: Sequence[str] = ()
    public_key: str | None = None


@dataclass(frozen=True)
class Pin:
    """The tunnelctl the config repo's CI and hooks run: a GitHub repository and one commit."""
    repository: str  # owner/name
    rev: str  # a full commit id: a tag can move, a commit cannot
    hook_url: str = ""  # what pre-commit clones; default https://github.com/<repository>

    def __post_init__(self) -> None:
        if not REPOSITORY_RE.match(self.repository):
            raise ScaffoldError(f"tunnelctl repository {self.repository!r}: expected OWNER/NAME "
                                "on GitHub")
        if not REV_RE.match(self.rev):
            raise ScaffoldError(f"tunnelctl revision {self.rev!r}: expected a full 40-hex "
                                "commit id (a tag or branch can move)")
        if self.hook_url and not URL_RE.match(self.hook_url):
            raise ScaffoldError(f"hook URL {self.hook_url!r}: not a plain git URL or path")

    @property
    def clone_url(self) -> str:
        return self.hook_url or f"https://github.com/{self.repository}"


@dataclass(frozen=True)
class Scaffold:
    files: dict[str, str] = field(default_factory=dict)  # repo-relative path -> content
    gateway: Gateway | None = None


def _gateway(spec: GatewaySpec) -> Gateway:
    try:
        pool = spec.pool or str(IPv4Interface(spec.address).network)
    except ValueError as exc:
        raise ScaffoldError(f"address: {exc}") from None
    values = {"name": spec.name, "interface": spec.interface, "listen_port": spec.listen_port,
              "address": spec.address, "pool": pool, "reserved": list(spec.reserved),
              "infra_interfaces": list(spec.infra_interfaces), "endpoint": spec.endpoint,
              "public_key": spec.public_key,
              "services": {"sip": {"proto": "udp", "ports": "5060,5080",
                                   "description": "SIP signalling"},
                           "rtp": {"proto": "udp", "ports": "10000-20000",
                                   "description": "RTP media"}},
              "default_services": ["sip", "rtp"]}
    try:
        return Gateway.model_validate(values)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                            for e in exc.errors())
        raise ScaffoldError(f"the gateway would not be valid: {reasons}") from None


def render_scaffold(spec: GatewaySpec, pin: Pin) -> Scaffold:
    """Every file of the new repo, rendered and the gateway file checked by the loader."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from reconciler.engine.templates import template_dir

    gw = _gateway(spec)
    # << >> delimiters: the workflows are full of GitHub's own ${{ }} expressions.
    env = Environment(loader=FileSystemLoader(template_dir() / "scaffold"),
                      undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False,
                      variable_start_string="<<", variable_end_string=">>")
    context = {"gw": gw, "pin": pin, "lists": {
        "reserved": ", ".join(str(n) for n in gw.reserved),
        "infra_interfaces": ", ".join(gw.infra_interfaces)}}
    files = {path: env.get_template(name).render(context) for path, name in TEMPLATES.items()}
    files.update({f"schemas/{name}": render(model) for name, model in SCHEMA_FILES.items()})
    state = load_files([SourceFile("gateway.yaml", files["gateway.yaml"].encode())])
    if state.problems:  # the template and the model disagree: a bug here, not the user's
        raise ScaffoldError("; ".join(str(p) for p in state.problems))
    return Scaffold(files, gw)


def write_scaffold(target: Path, scaffold: Scaffold) -> list[Path]:
    """Write the files into `target` (created if needed). Refuses, writing nothing, when the
    folder already holds a config repo or any of the files."""
    if (target / "gateway.yaml").exists() or (target / "gateways").exists():
        raise ScaffoldError(f"{target} already holds a config repo (gateway.yaml or gateways/)")
    clashes = sorted(p for p in scaffold.files if (target / p).exists())
    if clashes:
        raise ScaffoldError(f"{', '.join(clashes)} already exist in {target}; nothing written")
    written = []
    for rel, text in scaffold.files.items():
        write_atomic(target / rel, text)
        written.append(target / rel)
    return written
