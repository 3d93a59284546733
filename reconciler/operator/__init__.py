"""Tools ops run by hand: customer-side configs, bootstrap of a fresh host, `tunnelctl new`.

May import: reconciler.engine, reconciler.repo. Not reconciler.service, reconciler.lab or
reconciler.cli.
"""
