"""The host side of a cycle: render (desired host state), observe, plan, commands, apply, verify.

The cycle's entry point is `cycle.reconcile`; the pure diff is `plan.plan`; the pure payloads
for a plan are `commands.commands_for`; every side effect goes through `runner.Runner`.
Pure modules (hoststate, parsers, render, plan, commands, psk, wgkeys) never import the runner,
subprocess or socket. May import: reconciler.repo.
"""
