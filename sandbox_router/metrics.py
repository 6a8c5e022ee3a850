"""Prometheus metrics of one router app, in a registry of its own (so tests can run several).

Created by ``app.create_app``, updated by ``proxy``, served at GET /metrics. Labels are
bounded sets (method class, status code, error kind): never a sandbox name, path or header,
which would let callers grow the series without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    upstream_errors: Counter
    refusals: Counter
    in_flight: Gauge
    sandboxes: Gauge
    reads: Counter
    wakes: Counter
    activity: Counter
    connections: Gauge
    connections_closed: Counter


def create_metrics() -> Metrics:
    registry = CollectorRegistry(auto_describe=True)
    return Metrics(
        registry=registry,
        requests=Counter("sandbox_router_requests", "Requests answered, by method and status.",
                         ["method", "status"], registry=registry),
        latency=Histogram(
            "sandbox_router_request_duration_seconds",
            "Time from request to response headers sent (whole body not included).",
            ["method"], registry=registry,
            buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)),
        upstream_errors=Counter(
            "sandbox_router_upstream_errors",
            "Requests that failed at the sandbox, by the status the router answered (502, 504) "
            "or 'aborted' when the stream broke after the response started.",
            ["status"], registry=registry),
        refusals=Counter("sandbox_router_refusals",
                         "Requests refused before any connection, by reason.",
                         ["reason"], registry=registry),
        in_flight=Gauge("sandbox_router_in_flight_requests", "Requests being forwarded now.",
                        registry=registry),
        sandboxes=Gauge("sandbox_router_known_sandboxes",
                        "Sandboxes the resolution source knows (static or watch cache).",
                        registry=registry),
        reads=Counter(
            "sandbox_router_sandbox_reads",
            "Direct reads of a Sandbox from the API server, by why (uid: the cache disagrees "
            "with X-Sandbox-UID; connection: a name new to a client connection, or the cache "
            "disagrees with it; request: every request without a uid; not_ready: the cache "
            "says not Ready) and result (found, absent, error).",
            ["reason", "result"], registry=registry),
        wakes=Counter(
            "sandbox_router_wakes",
            "Wakes of suspended Sandboxes, by result (written: the wake annotation was "
            "written; ready: a wait ended with the Sandbox Ready; timeout: it was not Ready "
            "within wake_timeout; failed: the API server refused or could not be reached).",
            ["result"], registry=registry),
        activity=Counter(
            "sandbox_router_activity_reports",
            "Activity annotations written on Sandboxes with an idle timeout, by result (ok, "
            "error).", ["result"], registry=registry),
        connections=Gauge("sandbox_router_client_connections",
                          "Client connections open now.", registry=registry),
        connections_closed=Counter(
            "sandbox_router_client_connections_closed",
            "Client connections the router closed at its connection bound, by reason "
            "(evicted_idle: the longest-idle one made room; refused: every other one was "
            "serving a request, so the new one got a 503).", ["reason"], registry=registry),
    )
