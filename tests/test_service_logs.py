"""What the service logs about its repository never includes a credential."""

from __future__ import annotations

import pytest

from reconciler.service.logs import without_credentials


@pytest.mark.parametrize("url,shown", [
    ("https://x-access-token:ghs_SECRET@github.example/org/tenants.git",
     "https://github.example/org/tenants.git"),
    ("https://ghp_SECRET@github.example/org/tenants.git", "https://github.example/org/tenants.git"),
    ("https://github.example/org/tenants.git", "https://github.example/org/tenants.git"),
    ("ssh://git@git.example/org/tenants.git", "ssh://git@git.example/org/tenants.git"),
    ("ssh://git:SECRET@git.example/org/tenants.git", "ssh://git.example/org/tenants.git"),
    ("git@git.example:org/tenants.git", "git@git.example:org/tenants.git"),
    ("/srv/git/tenants.git", "/srv/git/tenants.git"),
])
def test_repo_urls_are_logged_without_credentials(url: str, shown: str) -> None:
    assert without_credentials(url) == shown
    assert "SECRET" not in without_credentials(url)
