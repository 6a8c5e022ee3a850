"""The upstream bench_router.py measures the router against: `python -m bench.upstream PORT`.

An aiohttp app in its own process, standing in for the runtime's small JSON answers
(GET /, POST /execute) and large downloads (GET /big?size=N), as fast as aiohttp serves. The
same app answers directly and behind the router, so the direct figure is the floor.
"""

from __future__ import annotations

import sys


def serve_upstream(port: int) -> None:
    from aiohttp import web

    block = bytes(range(256)) * 4096  # 1 MiB

    async def root(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def execute(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"stdout": body.get("command", ""), "stderr": "",
                                  "exit_code": 0})

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        while size > 0:
            chunk = block[: min(size, len(block))]
            size -= len(chunk)
            await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", root)
    app.router.add_post("/execute", execute)
    app.router.add_get("/big", big)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    serve_upstream(int(sys.argv[1]))
