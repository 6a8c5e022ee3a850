"""Claims at cluster speed on the real loop: kube-apiserver, Metacontroller, our hooks.

Each scenario runs on a fresh loop (bench/claimlab.py: the Metacontroller tier's stack with an
audit log of writes, the kubelet stand-in in instant mode, and one long-lived watch per kind
recording every claim's milestones). Runs on the Metacontroller the tests use
(METACONTROLLER_BIN, else ../shared/bin/metacontroller); without it, it says why.

Scenarios (`--opt claims.scenarios=a,b`, default all):

- `floor`: what the API server itself costs here: a plain create loop (ConfigMaps), one at a
  time and from 4 processes of 8 clients, with kube-apiserver + etcd CPU per write. Writes
  per claim times the cost of a write is the floor of every claim figure below.
- `seq`: claims one after another against a warm pool of 2 (each deleted and the pool full
  again before the next), beside Sandboxes made directly with their own pods (the cold floor).
- `cold`: 50 claims at once against a pool of 2: the cold path (pods made on demand).
- `burst`: 500 claims at once against 500 warm pods (10 pools of 50: claims spread over a
  template's pools).
- `sustained`: open-loop load, 50 claims/s for 60 s, against 10 pools of 30; claims not Ready
  120 s after the last create count as failed. Reports pool sync time and RSS at the end.
- `scale`: claim -> Ready p50 (sequential claims, kept) with 0, 1,000 and 5,000 Sandboxes
  already in the namespace (made directly, scaled to zero), with hooks and Metacontroller RSS
  and the pools' sync time at each level.

Every scenario asserts correctness under load (testbed/tenancy_rules.py over every recorded
event: no pod serves two Sandbox uids, no Sandbox changes pod...): a violation fails the run
(harness.Broken: the figures are kept, `make bench` exits non-zero). It reports claims that
never got Ready (a goal not met, not a failure of the run); it counts API writes per claim
(audit log), 409 Conflicts and Metacontroller's "outdated resourceVersion" retries, and CPU
per claim of every process.
Sizes: `--opt claims.rate=`, `claims.seconds=`, `claims.drain=`, `claims.burst=`,
`claims.burst_pools=`, `claims.cold=`, `claims.scale=0,1000,5000`, `claims.probe=`,
`claims.pools=`, `claims.pool_size=`, `claims.sequential=`, `claims.rounds=`; `--quick`
shrinks them all.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from bench import loop_probes
from bench.claimlab import NS, Lab
from bench.harness import Broken, Latencies, Result, Skipped, latency_result, percentiles
from bench.harness import Context as BenchContext
from sandbox_common.contract import GROUP, SANDBOXES, VERSION
from testbed.metacontroller import metacontroller_binary

ALL = ("floor", "seq", "cold", "burst", "sustained", "scale")


def run(ctx: BenchContext) -> list[Result]:
    binary, why_not = metacontroller_binary()
    if binary is None:
        raise Skipped(f"{why_not}; the claim benchmark needs the real loop")
    chosen = ctx.option("claims.scenarios", ",".join(ALL)).split(",")
    unknown = sorted(set(chosen) - set(ALL))
    if unknown:
        raise ValueError(f"unknown claims scenarios {unknown}; choose from {ALL}")
    results: list[Result] = []
    floor: dict[str, float] = {}
    if "floor" in chosen:
        floor_results, floor = write_floor(ctx, binary)
        results += floor_results
    if "seq" in chosen:
        results += sequential(ctx, binary)
    if "cold" in chosen:
        count = int(ctx.option("claims.cold", "50", "20"))
        results += burst(ctx, binary, count, pools=1, per_pool=2, goal_s=3.0,
                         name=f"{count} claims at once, pool of 2 (cold path)")
    if "burst" in chosen:
        count = int(ctx.option("claims.burst", "500", "100"))
        pools = int(ctx.option("claims.burst_pools", "10", "2"))
        results += burst(ctx, binary, count, pools=pools, per_pool=count // pools, goal_s=10.0,
                         name=f"{count} claims at once, {count} warm pods in {pools} pools")
    if "sustained" in chosen:
        results += sustained(ctx, binary)
    if "scale" in chosen:
        results += scale(ctx, binary)
    writes = writes_per_claim(results)
    if writes is not None:
        results.append(writes)
        if floor:
            write_ceiling(results, floor, writes)
    broken = [f"{r.name}: {r.extra['violation_summary']}" for r in results
              if r.extra.get("violations")]
    if broken:
        raise Broken("tenancy rules broken under load (a pod shared, a Sandbox that changed "
                     "pod, ...): " + "; ".join(broken), results)
    return results


# ---- helpers ------------------------------------------------------------------------------


def milestone_extra(report: dict[str, Any], cost: dict[str, Any], violations: int,
                    summary: str) -> dict[str, Any]:
    return {
        "stages": report["stages"], "stage_means_ms": report["stage_means_ms"],
        "cost": cost, "violations": violations, "violation_summary": summary,
        "failed": report["failed"], "warm_served": report["warm_served"],
        "last_ready_s": report["last_ready_s"],
        "last_sandbox_ready_s": report["last_sandbox_ready_s"],
    }


def whole_ms(value: float | None) -> str:
    """A figure from the hooks' access log, which counts whole milliseconds."""
    return "n/a" if value is None else "<1" if value < 1 else f"{value:.0f}"


def cost_note(cost: dict[str, Any]) -> str:
    return (f"{cost['controller_writes_per_claim']:.1f} Metacontroller writes/claim, "
            f"{cost['conflicts_total']} conflicts, "
            f"{cost['outdated_resource_version_logs']} outdated-resourceVersion retries")


def writes_per_claim(results: list[Result]) -> Result | None:
    """API writes per claim from a run in which every claim got Ready (the sustained run, else
    the largest burst): writes of claims that never finished would make the count look low."""
    done = [r for r in results if (r.name.startswith("sustained") or "at once" in r.name)
            and "cost" in r.extra and r.extra.get("failed") == {}]
    done.sort(key=lambda r: (not r.name.startswith("sustained"), -r.extra["cost"]["claims"]))
    if not done:
        return None
    source, cost = done[0], done[0].extra["cost"]
    per_claim = cost["controller_writes_per_claim"]
    return Result(
        component="claims", name="API writes per claim by Metacontroller",
        unit="", throughput=per_claim, throughput_unit="writes/claim",
        goal="<= 4 writes/claim, 0 conflicts",
        met=per_claim <= 4 and not cost["conflicts_total"],
        notes=f"from \"{source.name}\" (every claim Ready): {per_claim:.2f} writes/claim: "
        + ", ".join(f"{k.split(' ', 1)[1]} {v / max(1, cost['claims']):.2f}"
                    for k, v in cost["writes"].items() if k.startswith("metacontroller"))
        + f"; {cost['conflicts_total']} conflicts; every client: "
        f"{sum(cost['writes_per_claim'].values()):.2f}",
        extra={"cost": cost, "source": source.name})


def write_ceiling(results: list[Result], floor: dict[str, float], writes: Result) -> None:
    """The sustained run against what the API server's write rate allows: writes/s of the
    floor over every client's writes per claim (from a run in which every claim finished)."""
    per_claim = sum(writes.extra["cost"]["writes_per_claim"].values())
    ceiling = floor["writes_per_s"] / max(per_claim, 1e-9)
    for r in results:
        if r.name.startswith("sustained") and r.throughput:
            r.extra["write_ceiling_claims_per_s"] = ceiling
            r.floor_name = (f"API write ceiling: {floor['writes_per_s']:.0f} writes/s / "
                            f"{per_claim:.1f} writes per claim = {ceiling:.1f} claims/s")
            r.ratio_to_floor = r.throughput / ceiling


# ---- floor: the API server's own cost per write -------------------------------------------


FLOOR_PROCESSES, FLOOR_THREADS = 4, 8  # so the Python client is not what limits the rate


def create_config_maps(kubeconfig: str, prefix: str, count: int) -> None:
    """One load process of the floor: `count` ConfigMap creates from FLOOR_THREADS threads."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kubeconfig)
    api.rest_client.pool_manager.connection_pool_kw["maxsize"] = FLOOR_THREADS
    core = client.CoreV1Api(api)
    with ThreadPoolExecutor(FLOOR_THREADS) as executor:
        list(executor.map(lambda i: core.create_namespaced_config_map(
            NS, {"metadata": {"name": f"{prefix}-{i}"}}, _preload_content=False), range(count)))
    api.close()


def write_floor(ctx: BenchContext, binary: str) -> tuple[list[Result], dict[str, float]]:
    rounds, count = ctx.scale(3, 1), ctx.scale(400, 120)
    sequential, parallel_rates, cpu_per_write = Latencies(), [], []
    with Lab(binary) as lab, ProcessPoolExecutor(FLOOR_PROCESSES) as processes:
        counter = iter(range(10**9))
        kubeconfig = str(lab.stack.plane.kubeconfig)
        for round_ in range(rounds):
            samples = []
            for _ in range(count // 4):
                began = time.perf_counter()
                lab.core.create_namespaced_config_map(
                    NS, {"metadata": {"name": f"floor-{next(counter)}"}},
                    _preload_content=False)
                samples.append(time.perf_counter() - began)
            sequential.add_round(samples)
            share = count // FLOOR_PROCESSES
            used, began = loop_probes.cpu(lab.stack), time.perf_counter()
            list(processes.map(create_config_maps, [kubeconfig] * FLOOR_PROCESSES,
                               [f"load{round_}-{i}" for i in range(FLOOR_PROCESSES)],
                               [share] * FLOOR_PROCESSES))
            parallel_rates.append(share * FLOOR_PROCESSES / (time.perf_counter() - began))
            after = loop_probes.cpu(lab.stack)
            cpu_per_write.append(sum(after[k] - used[k] for k in ("kube-apiserver", "etcd"))
                                 * 1e3 / (share * FLOOR_PROCESSES))
    rate = statistics.median(parallel_rates)
    results = [
        latency_result("claims", "floor: one API write (ConfigMap create), one at a time",
                       sequential, notes="kube-apiserver + etcd on this machine, TLS, the "
                       "audit log on; every claim figure costs writes of this kind"),
        Result(component="claims", name="floor: API writes/s from 4 processes of 8 clients "
               "(ConfigMap creates)", unit="", throughput=rate, throughput_unit="writes/s",
               samples=count * rounds, rounds=rounds,
               notes=f"rounds: {', '.join(f'{r:.0f}' for r in parallel_rates)} writes/s; "
                     f"kube-apiserver + etcd CPU {statistics.median(cpu_per_write):.1f} ms "
                     f"per write", extra={"cpu_ms_per_write": statistics.median(cpu_per_write)}),
    ]
    return results, {"write_ms": sequential.median("p50") * 1e3, "writes_per_s": rate,
                     "cpu_ms_per_write": statistics.median(cpu_per_write)}


# ---- sequential -----------------------------------------------------------------------------


def sequential(ctx: BenchContext, binary: str) -> list[Result]:
    count = int(ctx.option("claims.sequential", "30", "8"))
    rounds = int(ctx.option("claims.rounds", "3", "1"))
    warm, cold, all_names = Latencies(), Latencies(), []
    with Lab(binary) as lab:
        pool = lab.make_pools(1, 2)[0]
        window = lab.meter.window()
        for _ in range(rounds):
            names = []
            for _ in range(count):
                name = lab.name("seq")
                names.append(name)
                lab.create_claim(name)
                lab.milestones.wait([name], 60)
                lab.delete_claims([name])
                lab.pool_full(2, pool)
            warm.add_round(lab.milestones.report(names)["latencies"])
            all_names += names
            samples = []
            for _ in range(count):
                name = lab.name("cold")
                began = time.monotonic()
                lab.create_sandboxes([name])
                seen = lab.wait_sandboxes_ready([name], 60)
                samples.append(seen[name] - began)
                lab.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, SANDBOXES,
                                                           name)
            cold.add_round(samples)
        report = lab.milestones.report(all_names)
        cost = lab.meter.cost(window, len(all_names) * 2)
        violations, summary = lab.violations()
    extra = milestone_extra(report, cost, violations, summary)
    extra["cold_p50_ms"] = cold.median("p50") * 1e3
    return [
        latency_result(
            "claims", "claim created -> Ready, warm pool (sequential)", warm,
            floor_name="Sandbox with its own pod -> Ready",
            ratio_to_floor=warm.median("p50") / cold.median("p50"),
            goal="0 failed, 0 shared", met=not report["failed"] and violations == 0,
            notes=f"{report['warm_served']}/{warm.samples} served warm; "
                  f"{violations} tenancy violations", extra=extra),
        latency_result("claims", "Sandbox with its own pod -> Ready (sequential)", cold),
    ]


# ---- bursts -------------------------------------------------------------------------------


def burst(ctx: BenchContext, binary: str, count: int, *, pools: int, per_pool: int,
          goal_s: float, name: str) -> list[Result]:
    with Lab(binary) as lab:
        lab.make_pools(pools, per_pool)
        window = lab.meter.window()
        names = [lab.name("burst") for _ in range(count)]
        creates = lab.burst(names)
        lab.milestones.wait(names, float(ctx.option("claims.timeout", "300")))
        report = lab.milestones.report(names)
        cost = lab.meter.cost(window, count)
        violations, summary = lab.violations()
    lat = Latencies()
    lat.add_round(report["latencies"] or [0.0])
    last = report["last_ready_s"]
    met = (not report["failed"] and violations == 0 and last <= goal_s)
    extra = milestone_extra(report, cost, violations, summary)
    extra["creates_s"] = creates
    return [latency_result(
        "claims", name, lat, throughput=count / last if last else None,
        throughput_unit="claims/s",
        goal=f"all Ready, the last within {goal_s:.0f} s, none shared", met=met,
        notes=f"last Ready after {last:.2f} s (creating them took {creates:.2f} s); "
              f"{len(report['failed'])} not Ready; {violations} tenancy violations; "
              f"{report['warm_served']} served from a pool pod; {cost_note(cost)}",
        extra=extra)]


# ---- sustained load -----------------------------------------------------------------------


def sustained(ctx: BenchContext, binary: str) -> list[Result]:
    """Open-loop load against pools sized for it; claims not Ready `claims.drain` seconds after
    the last create count as failed (the run must end even when the loop cannot keep up)."""
    rate = float(ctx.option("claims.rate", "50", "20"))
    seconds = float(ctx.option("claims.seconds", "60", "10"))
    pools = int(ctx.option("claims.pools", "10", "2"))
    per_pool = int(ctx.option("claims.pool_size", "30", "20"))
    drain = float(ctx.option("claims.drain", "120", "60"))
    with Lab(binary) as lab:
        lab.make_pools(pools, per_pool)
        window = lab.meter.window()
        names, lag = lab.steady("sustained", rate, seconds)
        lab.milestones.wait(names, drain)
        report = lab.milestones.report(names)
        cost = lab.meter.cost(window, len(names))
        pool_syncs = lab.meter.hook_times(window, "/sync/sandboxwarmpool")
        rss = loop_probes.rss(lab.stack)
        violations, summary = lab.violations()
    lat = Latencies()
    lat.add_round(report["latencies"] or [0.0])
    p50, p99 = lat.median("p50") * 1e3, lat.median("p99") * 1e3
    ready = len(report["latencies"])
    achieved = ready / max(report["last_ready_s"], seconds)
    extra = milestone_extra(report, cost, violations, summary)
    extra.update(schedule_lag_s=lag, rss_mib=rss,
                 pool_sync_ms_p50=statistics.median(pool_syncs) if pool_syncs else None)
    return [
        latency_result(
            "claims", f"sustained {rate:.0f} claims/s for {seconds:.0f} s "
                      f"({len(names)} claims, {pools} pools of {per_pool})", lat,
            throughput=achieved, throughput_unit="claims/s",
            goal="p50 <= 150 ms, p99 <= 500 ms, none failed, none shared",
            met=p50 <= 150 and p99 <= 500 and not report["failed"] and violations == 0,
            notes=f"{ready} Ready, {len(report['failed'])} not Ready {drain:.0f} s after the "
                  f"last create; {violations} tenancy violations; {report['warm_served']} "
                  f"served from a pool pod; CPU per claim "
                  f"{sum(cost['cpu_ms_per_claim'].values()):.0f} ms; pool sync "
                  f"{whole_ms(extra['pool_sync_ms_p50'])} ms p50 in the hooks; RSS hooks "
                  f"{rss.get('hooks', 0):.0f} MiB, Metacontroller "
                  f"{rss.get('metacontroller', 0):.0f} MiB; {cost_note(cost)}", extra=extra),
    ]


# ---- the scale curve ----------------------------------------------------------------------


def probe(lab: Lab, count: int, level: int) -> dict[str, Any]:
    """`count` claims one after another (kept): claim -> Ready, and the loop's state."""
    window = lab.meter.window()
    names = []
    for _ in range(count):
        name = lab.name(f"probe{level}")
        names.append(name)
        lab.create_claim(name)
        lab.milestones.wait([name], 120)
    report = lab.milestones.report(names)
    pool_syncs = lab.meter.hook_times(window, "/sync/sandboxwarmpool")
    return {
        "existing": level, "p50_ms": statistics.median(report["latencies"]) * 1e3,
        "p99_ms": percentiles(report["latencies"])["p99"] * 1e3,
        "failed": len(report["failed"]), "rss_mib": loop_probes.rss(lab.stack),
        "pool_sync_ms_p50": statistics.median(pool_syncs) if pool_syncs else None,
        "pool_sync_ms_max": max(pool_syncs) if pool_syncs else None,
        "stage_means_ms": report["stage_means_ms"],
        "cost": lab.meter.cost(window, count),
    }


def wait_quiet(lab: Lab, path_part: str, timeout: float, quiet_s: float = 3.0) -> float:
    """Wait until the hooks have served no `path_part` request for `quiet_s` seconds (the
    just-made Sandboxes' last syncs, e.g. each one's first poll for a missing child, done), so
    that the probes see Sandboxes that exist, not Sandboxes still being made. Seconds waited."""
    began = time.monotonic()
    window = lab.meter.window()
    seen, since = 0, time.monotonic()
    while time.monotonic() - began < timeout:
        count = len(lab.meter.hook_times(window, path_part))
        if count != seen:
            seen, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.5)
    return time.monotonic() - began


def scale(ctx: BenchContext, binary: str) -> list[Result]:
    """Sequential claims (kept) with 0, 1,000 and 5,000 Sandboxes already in the namespace:
    made directly and scaled to zero (a Sandbox, its Service and its status each), so growing
    the namespace costs a quarter of what as many claims would; the probes start once the
    hooks have had no Sandbox sync for 3 s (the new Sandboxes' own syncs are over)."""
    levels = [int(n) for n in ctx.option("claims.scale", "0,1000,5000", "0,200,600").split(",")]
    probes = int(ctx.option("claims.probe", "20", "8"))
    points: list[dict[str, Any]] = []
    existing = 0
    with Lab(binary) as lab:
        lab.make_pools(2, 10)
        for level in levels:
            if level > existing:
                made = [lab.name("existing") for _ in range(level - existing)]
                lab.create_sandboxes(made, replicas=0)
                lab.wait_sandboxes_settled(made, 600)
                wait_quiet(lab, "/sync/sandbox", timeout=120)
                existing = level
            points.append(probe(lab, probes, existing))
            existing += probes
        violations, summary = lab.violations()
    base = points[0]["p50_ms"] if points else 0.0
    results = []
    for point in points:
        ratio = point["p50_ms"] / base if base else None
        results.append(Result(
            component="claims",
            name=f"claim -> Ready with {point['existing']} existing Sandboxes",
            unit="ms", p50=point["p50_ms"], p99=point["p99_ms"],
            peak_rss_mib=sum(point["rss_mib"].values()),
            goal="p50 within 2x of the first level", met=ratio is not None and ratio <= 2.0,
            floor_name="the first level", ratio_to_floor=ratio, samples=probes, rounds=1,
            notes=f"hooks RSS {point['rss_mib'].get('hooks', 0):.0f} MiB, Metacontroller RSS "
                  f"{point['rss_mib'].get('metacontroller', 0):.0f} MiB, pool sync "
                  f"{whole_ms(point['pool_sync_ms_p50'])} ms p50 "
                  f"({whole_ms(point['pool_sync_ms_max'])} max) in the hooks; "
                  f"{violations} tenancy violations over the whole curve",
            extra=point | {"violations": violations, "violation_summary": summary}))
    return results
