"""Backends: where a sandbox comes from. base.py is the seam; local/ and kubernetes.py serve it.

The client (agentic_sandbox._client) talks to a backend only through `Backend.open()` and
`Backend.close()`, and to the sandbox through the Endpoint's httpx transport; choice.py
picks and makes the backend, channel.py is the transport over a handed-out socket (local),
router.py the way through the sandbox router and claims.py the SandboxClaim's API calls
(Kubernetes). Nothing here knows about commands or files.
"""
