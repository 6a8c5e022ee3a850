"""sandbox_common: what more than one package needs, defined once.

- contract.py  the names every package shares: API groups, kinds, plurals, Metacontroller's
               map keys, label and annotation keys, routing headers, condition reasons
               (classified ready, waiting or terminal). Constants only; hooks, router, client,
               tests and bench import it.
- serving.py   the gunicorn worker both servers use (HeadFirstWorker): a connection gets a
               thread only once its request head is complete, and every answer gunicorn
               writes itself (400, 414, 431, 501, 500...) is the JSON error `{"error": ...}`.
- settings.py  settings from a dataclass's defaults, a prefixed environment and a mapping
               (the router's and the runtime's config.py).

Small and dependency-free: nothing here imports Flask or the servers' own packages; the
worker module imports gunicorn, and is only loaded by gunicorn (from the servers'
gunicorn_conf), never by hook or runtime modules. This file imports nothing, so importing
sandbox_common.contract costs nothing.
"""
