"""tunnelctl: per-organisation WireGuard customer tunnels, reconciled from git.

Stages: load -> render -> observe -> plan -> apply -> verify -> audit (see docs/ARCHITECTURE.md).
"""

__version__ = "0.1.0"
