"""sandbox_runtime: the HTTP server that runs inside every sandbox pod (port 8888).

It runs model-written shell commands and moves files in one workspace directory, and it
must stay up and stay confined under hostile input. Map of the package, by question:

- what are the routes?                routes.py (the one table; handlers per route)
- how is a request read, an error     web.py (Request, Response, route lookup, errors as
  answered, a path decoded?            JSON, the WSGI adapter both transports use)
- how is /execute validated?          commands.py (fields, the slot, the stream, records)
- where is a timeout enforced?        execute.py (deadline, output caps, kill the group)
- what may outlive its request?       background.py (/processes: start, list, wait,
                                      output, kill; the only processes that may)
- how can a command not escape?       keeper.py (the keeper program), procs.py (the server's
                                      side: pool, leftovers killed, the one reaper)
- where is a path confined?           confine.py (resolve, symlinks, /proc/self/fd checks)
- where is an upload parsed?          multipart.py (the body) -> files.py (the file ops)
- what bounds commands across         slots.py (record locks on a memfd)
  workers?
- what is counted?                    metrics.py (one set, shared by every worker)
- what is shared by the handlers?     runtime.py (settings, slots, keepers, metrics)
- where do settings come from?        config.py (on sandbox_common.settings)
- how is it served?                   app.py (create_app), gunicorn_conf.py and
                                      __main__.py (TCP), stdio.py and launch.py (stdin/stdout,
                                      the local sandbox's first process)
- errors.py the error answers; logs.py JSON logs on stderr

Nothing here imports the client, the router or the hooks.
"""
