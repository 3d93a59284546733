"""What every command shares: the exit codes, and one spelling for the same thing everywhere.

- `-o/--output FORMAT` is always a format; a file to write is `-f/--out-file FILE`.
- The config repo is `--repo DIR` on every command, default `.`: the folder holding
  gateway.yaml at or above it, or `./tenants` (this project's layout).
- Host commands take `--config FILE` and read the service's settings (toml + TUNNELCTL_*),
  flags winning, so a hand `apply` acts on what the service acts on; they say which.

No import of the engine here: `tunnelctl validate` must stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reconciler.repo.discovery import find_root

if TYPE_CHECKING:
    from reconciler.service.settings import Settings

# The exit-code contract (README "Everyday commands"). 64 is EX_USAGE of sysexits.h: a script
# can tell wrong flags from "there are changes" (2, only with --detailed-exitcode).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_USAGE = 64

REPO_HELP = ("config repo: its root or any folder inside it "
             "[default: the one holding the current folder, or ./tenants]")
CONFIG_HELP = "host settings file [default: $TUNNELCTL_CONFIG or /etc/tunnelctl/tunnelctl.toml]"

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def repo_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--repo", "repo", type=click.Path(path_type=Path, exists=True),
                        default=None, help=REPO_HELP)(fn)


def output_option(*choices: str, help: str | None = None) -> Decorator:
    return click.option("-o", "--output", "fmt", type=click.Choice(list(choices)),
                        default=choices[0], show_default=True, help=help)


def out_file_option(help: str) -> Decorator:
    return click.option("-f", "--out-file", "out_file",
                        type=click.Path(path_type=Path, dir_okay=False), default=None, help=help)


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False),
                        default=None, help=CONFIG_HELP)(fn)


def detailed_exitcode_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--detailed-exitcode", is_flag=True,
                        help="exit 2 when there are changes (0 none, 1 error)")(fn)


def pick_path(repo: Path | None, positional: Path | None) -> Path:
    """The one path a command was given: `--repo` or the older positional form, not both."""
    if repo is not None and positional is not None and repo.resolve() != positional.resolve():
        raise click.UsageError(f"give the config repo once: --repo {repo} or {positional}")
    return repo or positional or Path(".")


def repo_root(path: Path) -> Path:
    root = find_root(path)
    if root is None:
        raise click.ClickException(
            f"no gateway.yaml (or gateways/) found in {path} or above; point --repo at a config "
            "repo (its root, an org folder or a tunnel file), or create one with 'tunnelctl init'")
    return root


def host_settings(config: Path | None, **flags: Any) -> tuple[Settings, str]:
    """The service's settings with these flags on top, and where they came from (for the
    banner): flags > TUNNELCTL_* > the toml file > defaults."""
    from reconciler.service.settings import SettingsError, config_path, load_settings

    try:
        settings = load_settings(config, **flags)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    file = config_path(config)
    source = str(file) if file.exists() else f"{file} (absent: defaults and TUNNELCTL_*)"
    return settings, source


def banner(*, settings: str, gateway: str, interface: str, netns: str | None = None,
           repo: Path | None = None, extra: str = "") -> None:
    """One stderr line saying what a host command acts on, before it acts (the same line for
    plan and apply, so their outputs compare)."""
    where = f" in netns {netns}" if netns else ""
    parts = [f"tunnelctl: gateway {gateway}, interface {interface}{where}"]
    if repo is not None:
        parts.append(f"repo {repo}")
    if extra:
        parts.append(extra)
    parts.append(f"settings {settings}")
    click.echo("; ".join(parts), err=True)
