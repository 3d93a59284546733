"""Git as the source of truth: fetching commits (source), deciding which commit may be enforced
(admission: held orgs, the removal guard), the audit branch, and the pull-request plan.

May import: reconciler.engine (typed host state and plans), reconciler.repo.
"""
