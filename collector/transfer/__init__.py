"""Chunks between hosts: `send` (a secondary to the main), `replicate` (the main to its
replicas), `rsync` (the push both use), `receive` (the receiving end behind rrsync), `adopt`
(a promoted main takes over its replica) and `retention` (copies removed once safe).
"""
