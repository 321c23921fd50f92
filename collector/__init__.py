"""Redundant collection of the X API v2 sampled stream.

Every server captures the stream into minute chunks (`collector stream`); the main merges
them hourly (`collector process`) and publishes tweet IDs on OSF (`collector upload`).
"""

__version__ = "0.1.0"
