"""The config repository as data: models, YAML I/O, per-file and cross-file rules, allocation,
JSON Schema and problem output.

Owns: everything a tunnel or gateway file may say, and every reason one is refused (with
file:line:col). Pure: reads bytes it is given, never the host. May import: nothing of
reconciler outside this package (the bottom layer).
"""
