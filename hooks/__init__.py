"""Metacontroller webhooks for Agent Sandbox: pure functions from hook request to response.

One module per parent kind (sandbox, sandboxclaim, sandboxwarmpool, sandboxtemplate) holds its
`sync` / `customize` / `finalize` functions; `objects` holds the builders they share, `schemas`
validates specs against schemas/*.json, and `app` serves them over HTTP (Flask under gunicorn).
Hook modules never import flask, kubernetes or an HTTP library. Map: docs/architecture.md.
"""
