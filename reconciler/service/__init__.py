"""The long-running reconciler: the controller (one cycle from commit to audit), the loop and its
triggers, persisted state, logs, metrics, sd_notify, settings and `status`.

May import: reconciler.gitops, reconciler.engine, reconciler.repo. Not reconciler.operator,
reconciler.lab or reconciler.cli.
"""
