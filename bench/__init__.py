"""Benchmarks, beside the tests: `make bench` runs `python -m bench`.

Each module `bench/bench_<component>.py` exposes `run(ctx: Context) -> list[Result]`. The
runner records the machine, runs every module (or those named on the command line), and
writes `bench/results.json` and the table in `docs/benchmarks.md`.
"""
