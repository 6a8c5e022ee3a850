"""Backends: where a sandbox comes from. base.py is the seam; local.py and kubernetes.py serve it.

The client (agentic_sandbox._client) talks to a backend only through `Backend.open()` and
`Backend.close()`; nothing here knows about commands or files.
"""
