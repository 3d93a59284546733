"""Host settings: one TOML file, TUNNELCTL_* environment overrides, flags above both."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.service.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("TUNNELCTL_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tunnelctl.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNELCTL_CONFIG", str(tmp_path / "absent.toml"))
    s = load_settings()
    assert s.interval == 30 and s.branch == "main" and s.max_removal_share == 0.5
    assert s.metrics_bind == ("127.0.0.1", 9586)
    assert not s.allow_empty and not s.accept_rewrites and not s.verify_signatures
    assert s.mirror_dir == Path("/var/lib/tunnelctl/mirror.git")


def test_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, 'repo_url = "/srv/tunnels.git"\ninterval = 5\ngateway = "cloud-1"\n'
                          'branch = "ops"\nstate_dir = "/tmp/st"\n')
    s = load_settings(cfg)
    assert (s.repo_url, s.interval, s.gateway, s.branch) == ("/srv/tunnels.git", 5, "cloud-1", "ops")
    assert s.state_dir == Path("/tmp/st")
    monkeypatch.setenv("TUNNELCTL_INTERVAL", "2.5")
    monkeypatch.setenv("TUNNELCTL_GATEWAY", "cloud-2")
    monkeypatch.setenv("TUNNELCTL_REPO_URL", "ssh://git@example.net/t.git")
    monkeypatch.setenv("TUNNELCTL_BRANCH", "release")
    monkeypatch.setenv("TUNNELCTL_ALLOW_EMPTY", "true")
    monkeypatch.setenv("TUNNELCTL_NETNS", "")  # empty = unset
    s = load_settings(cfg)
    assert (s.repo_url, s.interval, s.gateway, s.branch) == (
        "ssh://git@example.net/t.git", 2.5, "cloud-2", "release")
    assert s.allow_empty is True and s.netns is None
    s = load_settings(cfg, interval=1.0, accept_rewrites=True, gateway=None)
    assert s.interval == 1.0 and s.accept_rewrites is True
    assert s.gateway == "cloud-2", "a flag left at None does not erase the environment's value"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, 'repo_url = "/x.git"\n')
    monkeypatch.setenv("TUNNELCTL_CONFIG", str(cfg))
    assert load_settings().repo_url == "/x.git"


def test_errors_name_the_file_key_and_variable(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, 'repo_url = "/x.git"\nintervall = 5\n')
    with pytest.raises(SettingsError, match=r"tunnelctl.toml .*intervall.*not permitted"):
        load_settings(cfg)
    cfg = write(tmp_path, 'max_removal_share = 1.5\n')
    with pytest.raises(SettingsError, match=r"TUNNELCTL_MAX_REMOVAL_SHARE.*less than or equal"):
        load_settings(cfg)
    cfg = write(tmp_path, 'interval = [\n')
    with pytest.raises(SettingsError, match="tunnelctl.toml"):
        load_settings(cfg)
    cfg = write(tmp_path, 'metrics_address = "localhost"\n')
    with pytest.raises(SettingsError, match="host:port"):
        load_settings(cfg)
    write(tmp_path, "")
    monkeypatch.setenv("TUNNELCTL_INTERVAL", "soon")
    with pytest.raises(SettingsError, match=r"\$TUNNELCTL_INTERVAL"):
        load_settings(tmp_path / "tunnelctl.toml")
    with pytest.raises(SettingsError, match="no such config file"):
        load_settings(tmp_path / "missing.toml")


def test_metrics_can_be_disabled_and_ssh_command_is_quoted(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'metrics_address = ""\nssh_identity = "/etc/tunnelctl/my key"\n'
                          'ssh_known_hosts = "/etc/tunnelctl/known_hosts"\n')
    s = load_settings(cfg)
    assert s.metrics_bind is None
    assert s.git_ssh_command is not None
    assert "-i '/etc/tunnelctl/my key'" in s.git_ssh_command
    assert "StrictHostKeyChecking=yes" in s.git_ssh_command
    assert load_settings(write(tmp_path, "")).git_ssh_command is None


def test_signature_settings(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, 'allowed_signers = "/etc/tunnelctl/allowed_signers"\n'))
    assert s.verify_signatures and s.allowed_signers == Path("/etc/tunnelctl/allowed_signers")
