"""Host settings of the service: one TOML file, every key overridable by a TUNNELCTL_* variable.

Precedence, highest first: explicit overrides (command-line flags) > environment > file > defaults.
The file is optional for commands that only need paths (`status`, `suspend`); `run` needs a
repository URL from somewhere.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_CONFIG = Path("/etc/tunnelctl/tunnelctl.toml")
ENV_PREFIX = "TUNNELCTL_"


class SettingsError(ValueError):
    """The config file or an override is wrong; the message names the file/variable and key."""


# The parsed config file of the load_settings call in progress (a source below the environment).
_FILE_VALUES: ContextVar[dict[str, Any]] = ContextVar("tunnelctl_file_values")


class _FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _FILE_VALUES.get({}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get({}))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    repo_url: str = Field(default="", description="git remote of the config repo (URL or local path)")
    branch: str = Field(default="main", pattern=r"^[A-Za-z0-9._/-]{1,200}$")
    repo_path: str = Field(default="", description="folder inside the repo holding gateway.yaml")
    gateway: str | None = Field(default=None, description="gateway this host applies; "
                                "may be omitted when the repo defines exactly one")
    interval: float = Field(default=30.0, gt=0, description="seconds between level-triggered cycles")
    retry_max: float = Field(default=600.0, gt=0, description="cap of the back-off for a failed commit")
    fetch_timeout: float = Field(default=20.0, gt=0)
    lock_timeout: float = Field(default=30.0, gt=0, description="seconds a cycle waits for "
                                "another apply (CLI) to release the interface lock")
    state_dir: Path = Path("/var/lib/tunnelctl")
    secret_dir: Path = Path("/etc/tunnelctl")
    config_dir: Path = Path("/etc/wireguard")
    netns: str | None = Field(default=None, description="network namespace (labs only)")
    interface: str | None = Field(default=None, description="override the gateway's interface name")
    allowed_signers: Path | None = Field(default=None, description="SSH allowed-signers file; "
                                         "when set (or gnupg_home), every applied commit must be signed")
    gnupg_home: Path | None = Field(default=None, description="OpenPGP keyring of trusted signers")
    verify: Literal["head", "all"] = Field(default="head", description="with allowed_signers or "
                                           "gnupg_home: head = the head must be signed; all = "
                                           "every commit after the applied one up to the head")
    ssh_identity: Path | None = Field(default=None, description="deploy key for ssh:// remotes "
                                      "(the unit hides /root, so ~/.ssh is not used)")
    ssh_known_hosts: Path | None = Field(default=None, description="known_hosts for ssh:// remotes")
    metrics_address: str = Field(default="127.0.0.1:9586", description="host:port, or '' to disable")
    max_removal_share: float = Field(default=0.5, ge=0, le=1,
                                     description="refuse a commit removing more than this share of tenants")
    allow_empty: bool = Field(default=False, description="allow a commit that removes every tenant")
    accept_rewrites: bool = Field(default=False, description="apply a head that does not descend "
                                  "from the last applied commit (force-push)")
    watch: bool = Field(default=True, description="watch a local repo path for changes")
    log_format: Literal["json", "kv"] = "json"
    host: str = Field(default_factory=lambda: os.uname().nodename, description="name in audit entries")

    @field_validator("gateway", "netns", "interface", "allowed_signers", "gnupg_home",
                     "ssh_identity", "ssh_known_hosts", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        # An empty environment variable means "not set", as it does for systemd's Environment=.
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (init kwargs) beat the environment, which beats the file.
        return (init_settings, env_settings, _FileSource(settings_cls))

    @property
    def verify_signatures(self) -> bool:
        return self.allowed_signers is not None or self.gnupg_home is not None

    @property
    def git_ssh_command(self) -> str | None:
        """GIT_SSH_COMMAND for ssh remotes; paths only, never key material."""
        if self.ssh_identity is None and self.ssh_known_hosts is None:
            return None
        parts = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if self.ssh_identity is not None:
            parts += ["-o", "IdentitiesOnly=yes", "-i", _ssh_quote(str(self.ssh_identity))]
        if self.ssh_known_hosts is not None:
            parts += ["-o", f"UserKnownHostsFile={_ssh_quote(str(self.ssh_known_hosts))}",
                      "-o", "StrictHostKeyChecking=yes"]
        return " ".join(parts)

    @property
    def mirror_dir(self) -> Path:
        return self.state_dir / "mirror.git"

    @property
    def metrics_bind(self) -> tuple[str, int] | None:
        if not self.metrics_address:
            return None
        address, _, port = self.metrics_address.rpartition(":")
        return (address.strip("[]") or "127.0.0.1", int(port))

    @field_validator("metrics_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value:
            _, sep, port = value.rpartition(":")
            if not sep or not port.isdigit() or int(port) > 65535:
                raise ValueError(f"{value!r} must be host:port, e.g. 127.0.0.1:9586")
        return value


def _ssh_quote(path: str) -> str:
    # git runs GIT_SSH_COMMAND through sh; an operator's path is quoted, never interpolated raw.
    import shlex

    return shlex.quote(path)


def config_path(explicit: Path | str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG)


def load_settings(path: Path | str | None = None, *, required: bool = False,
                  **overrides: Any) -> Settings:
    """Settings from `path` (default $TUNNELCTL_CONFIG or /etc/tunnelctl/tunnelctl.toml).

    A missing default file is fine (env and defaults); a missing explicit file is an error.
    `overrides` (flags) win over everything; None values are ignored.
    """
    file = config_path(path)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{file}: {exc}") from None
        except OSError as exc:
            raise SettingsError(f"{file}: {exc.strerror}") from None
    elif path is not None or required:
        raise SettingsError(f"{file}: no such config file")
    token = _FILE_VALUES.set(data)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SettingsError(_describe(exc, file)) from None
    finally:
        _FILE_VALUES.reset(token)


def _describe(exc: ValidationError, file: Path) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        env = ENV_PREFIX + key.upper()
        parts.append(f"{file} (or ${env}): {key}: {err['msg']}")
    return "; ".join(parts)
