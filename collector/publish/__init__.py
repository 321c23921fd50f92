"""Publishing on OSF: `files` (what is published, and where), `ledger` (what is there already),
`osf_api` (the requests), `upload` (`collector upload`: one run under a lock).
"""
