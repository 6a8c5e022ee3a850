"""The sandbox router: one authenticated front door that forwards a request to one sandbox.

`sandbox-router` (``__main__``) serves ``app.create_app``. ``auth`` checks the bearer token
first. A request names its sandbox with ``X-Sandbox-ID`` / ``X-Sandbox-Namespace`` /
``X-Sandbox-Port`` (and ``X-Sandbox-UID``, ``X-Sandbox-Timeout``); ``headers`` validates
them, ``resolve`` maps them to the sandbox's own pod address through a source (``sources``:
the Kubernetes watch cache of ``records``, or a static file), ``addresses`` refuses addresses
a proxy must never reach, and ``proxy`` streams the request there (within the timeout) and
the answer back. The router never connects to a host, IP or port a caller names: callers name
a sandbox, never an address. See docs/router.md.
"""
