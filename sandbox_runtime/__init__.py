"""sandbox_runtime: the HTTP server that runs inside every sandbox pod (port 8888).

It runs model-written shell commands and moves files in one workspace directory, and it
must stay up and stay confined under hostile input. Map of the package:

- config.py   defaults, SANDBOX_RUNTIME_* environment, validation of settings
- core.py     what the routes do, without Flask/werkzeug/prometheus_client (fast --stdio start)
- errors.py   the HTTP error answers (400/403/404/413/429/503)
- app.py      create_app(config) -> Flask: the route table, JSON errors, metrics
- execute.py  one command: hand it to a keeper, read capped output, deadline, kill its group
- keeper.py   the keeper program: runs commands in a process group they cannot leave
- procs.py    the server's side of keepers: pool, reuse, retirement, killing a group
- files.py    upload/download/list/exists, confined to the workspace
- stdio.py    over stdin/stdout (for runsc --network=none): core first, Flask when needed
- __main__.py the `sandbox-runtime` console script (gunicorn or --stdio)

Nothing here imports the client, the router or the hooks.
"""
