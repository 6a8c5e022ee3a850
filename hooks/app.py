"""The hooks' HTTP surface: a Flask app factory, the route table, metrics and JSON errors.

gunicorn loads `hooks.app:create_app()` (see gunicorn_conf.py). The view only parses the
envelope, calls a pure hook function and returns its answer; it never turns an exception into
a 200, because Metacontroller treats any 200 as the complete desired state.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from werkzeug.exceptions import BadRequest, HTTPException

from hooks import k8srules, sandbox, sandboxclaim, sandboxtemplate, sandboxwarmpool
from hooks.typedefs import DEFAULT_SETTINGS, HookSettings

log = logging.getLogger("hooks")

# (hook, resource) -> pure function. Sync and finalize take (request, now=, settings=);
# customize takes (request) alone: its answer may depend on the parent only.
ROUTES: dict[tuple[str, str], Callable[..., Any]] = {
    ("sync", "sandbox"): sandbox.sync,
    ("customize", "sandbox"): sandbox.customize,
    ("sync", "sandboxclaim"): sandboxclaim.sync,
    ("customize", "sandboxclaim"): sandboxclaim.customize,
    ("sync", "sandboxwarmpool"): sandboxwarmpool.sync,
    ("customize", "sandboxwarmpool"): sandboxwarmpool.customize,
    ("finalize", "sandboxwarmpool"): sandboxwarmpool.finalize,
    ("sync", "sandboxtemplate"): sandboxtemplate.sync,
    ("customize", "sandboxtemplate"): sandboxtemplate.customize,
}

REQUESTS = Counter(
    "sandbox_hooks_requests_total", "Hook requests answered", ["hook", "resource", "code"]
)
LATENCY = Histogram(
    "sandbox_hooks_request_seconds",
    "Time to answer a hook request",
    ["hook", "resource"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
)
ERRORS = Counter("sandbox_hooks_errors_total", "Hook requests that raised", ["hook", "resource"])


def envelope_problem(body: Any, hook: str) -> str | None:
    """Why a body is not a Metacontroller hook request, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    parent = body.get("parent")
    if (
        not isinstance(parent, dict)
        or not isinstance(parent.get("metadata"), dict)
        or not isinstance(parent["metadata"].get("name"), str)
    ):
        return "parent must be an object with metadata.name"
    if hook == "customize":
        return None
    for section in ("children", "related"):
        groups = body.get(section)
        if groups is None:
            continue
        if not isinstance(groups, dict) or not all(
            isinstance(objs, dict)
            and all(
                isinstance(o, dict) and isinstance(o.get("metadata"), dict) for o in objs.values()
            )
            for objs in groups.values()
        ):
            return f"{section} must map 'Kind.apiVersion' to objects keyed by name"
    if not isinstance(body.get("finalizing", False), bool):
        return "finalizing must be a boolean"
    return None


def settings_from(config: Mapping[str, Any]) -> HookSettings:
    runtime_class = config["RUNTIME_CLASS_NAME"]
    runtime_class = "" if runtime_class is None else str(runtime_class)
    if runtime_class and (problem := k8srules.RULES["dns1123-subdomain"].problem(runtime_class)):
        # Every pod made with it would be refused by the API server: fail at start instead.
        raise ValueError(f"SANDBOX_HOOKS_RUNTIME_CLASS_NAME: {problem}")
    router_namespace = str(config["ROUTER_NAMESPACE"])
    if problem := k8srules.RULES["dns1123-label"].problem(router_namespace):
        # A policy no API server admits would leave direct Sandboxes without a pod: fail now.
        raise ValueError(f"SANDBOX_HOOKS_ROUTER_NAMESPACE: {problem}")
    return {
        "cluster_domain": str(config["CLUSTER_DOMAIN"]),
        "warm_pod_grace_seconds": float(config["WARM_POD_GRACE_SECONDS"]),
        "runtime_class_name": runtime_class,
        "router_namespace": router_namespace,
    }


def metrics_payload() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Under gunicorn every worker writes its own files; add them up.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the hooks app: defaults, then SANDBOX_HOOKS_* environment, then `config`."""
    app = Flask("hooks")
    app.config.from_mapping(
        CLUSTER_DOMAIN=DEFAULT_SETTINGS["cluster_domain"],
        WARM_POD_GRACE_SECONDS=DEFAULT_SETTINGS["warm_pod_grace_seconds"],
        RUNTIME_CLASS_NAME=DEFAULT_SETTINGS["runtime_class_name"],
        ROUTER_NAMESPACE=DEFAULT_SETTINGS["router_namespace"],
        MAX_CONTENT_LENGTH=32 * 1024 * 1024,  # a pool of 1,000 pods is a few MiB
    )
    app.config.from_prefixed_env("SANDBOX_HOOKS")
    if config:
        app.config.from_mapping(config)
    settings = settings_from(app.config)

    @app.post("/<hook>/<resource>")
    def run_hook(hook: str, resource: str) -> tuple[Response, int]:
        handler = ROUTES.get((hook, resource))
        if handler is None:
            return jsonify(error=f"no {hook} hook for {resource}"), 404
        started = time.perf_counter()
        code = 500
        body: Any = None
        try:
            try:
                request.get_data(cache=True)
            except HTTPException:
                raise
            except Exception:  # the server could not read it (broken chunked framing, cut)
                code = 400
                return jsonify(error="request body could not be read to its end"), 400
            body = request.get_json(force=True, silent=False)
            problem = envelope_problem(body, hook)
            if problem:
                code = 400
                return jsonify(error=problem), 400
            if hook == "customize":
                answer = handler(body)
            else:
                answer = handler(body, now=datetime.now(UTC), settings=settings)
            code = 200
            return jsonify(answer), 200
        except BadRequest as exc:
            code = 400
            return jsonify(error=f"request body is not JSON: {exc.description}"), 400
        except RecursionError:
            code = 400
            return jsonify(error="request body is nested too deeply"), 400
        except HTTPException as exc:  # e.g. 413: answered as JSON by http_error below
            code = exc.code or 500
            raise
        except Exception:
            ERRORS.labels(hook, resource).inc()
            log.exception(
                "hook failed",
                extra={
                    "hook": hook,
                    "resource": resource,
                    "parent": body["parent"]["metadata"]["name"],
                },
            )
            return jsonify(error=f"{hook} hook for {resource} failed; see the hooks' log"), 500
        finally:
            REQUESTS.labels(hook, resource, str(code)).inc()
            LATENCY.labels(hook, resource).observe(time.perf_counter() - started)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok", hooks=sorted(f"/{h}/{r}" for h, r in ROUTES))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(metrics_payload(), mimetype=CONTENT_TYPE_LATEST)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return jsonify(error=exc.description), exc.code or 500

    @app.errorhandler(Exception)
    def crash(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return jsonify(error="internal error; see the hooks' log"), 500

    return app
