"""Where the jinja2 templates live: `templates/` of a checkout (editable installs, tests), or the
copy packaged as `reconciler.templates` in a wheel (see pyproject's package-dir mapping).

No environment variable or setting can point elsewhere: the interface template is rendered
with the gateway's private key in it, so a swapped template would be a way to exfiltrate it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

CHECKOUT_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def template_dir() -> Path:
    # A checkout is recognised by its own template, not merely a folder named templates
    # beside site-packages.
    if (CHECKOUT_TEMPLATES / "wg-interface.conf.j2").is_file():
        return CHECKOUT_TEMPLATES
    spec = importlib.util.find_spec("reconciler.templates")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("tunnelctl templates not found (reinstall the package)")
    return Path(next(iter(spec.submodule_search_locations)))
