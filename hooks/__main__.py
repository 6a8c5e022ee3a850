"""`sandbox-hooks`: gunicorn serving hooks.app with hooks/gunicorn_conf.py, plus your flags.

sandbox-hooks                          # 0.0.0.0:8080
sandbox-hooks --bind 127.0.0.1:9000    # any gunicorn flag overrides the config file
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from gunicorn.app.wsgiapp import run

    sys.argv = ["sandbox-hooks", "-c", "python:hooks.gunicorn_conf", *(argv or sys.argv[1:])]
    run()


if __name__ == "__main__":
    main()
