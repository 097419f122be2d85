"""Apply-to-Job latency of the TrainingRun operator, and its memory.

    .venv/bin/python bench/operator_latency.py [--runs 100]

Starts (or reuses) the local control plane, runs the operator as a
subprocess, and measures from the create call of a TrainingRun until its Job
is visible through a watch, for 1 run and for a burst of N runs. The
baseline is the same measurement for a Job created directly (the floor any
controller pays: API write plus watch delivery), so the ratio is the
operator's own cost. Prints p50/p99, the operator's resident memory, and the
API calls the operator made per run of the burst (from the control plane's
audit log, until the runs settle), by verb and resource.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from kubernetes import client, watch

from azaion_devtools.benchkit import cpu_seconds, local_plane, percentile, rss_mib
from azaion_devtools.cluster import start_operator, trainingrun

GROUP, VERSION, PLURAL = "ai.azaion.com", "v1alpha1", "trainingruns"


class JobWatcher:
    """Records when each Job name first shows up in a watch of one namespace."""

    def __init__(self, batch: client.BatchV1Api, namespace: str) -> None:
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._guarded_run, args=(batch, namespace), daemon=True)
        self._thread.start()
        time.sleep(0.5)

    def _guarded_run(self, batch: client.BatchV1Api, namespace: str) -> None:
        try:
            self._run(batch, namespace)
        except Exception:  # the watch is cut when the namespace goes away at the end
            if not self._stop.is_set():
                raise

    def _run(self, batch: client.BatchV1Api, namespace: str) -> None:
        for event in self._watch.stream(batch.list_namespaced_job, namespace, timeout_seconds=600):
            self.seen.setdefault(event["object"].metadata.name, time.monotonic())
            if self._stop.is_set():
                return

    def wait_for(self, names: list[str], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while any(n not in self.seen for n in names):
            if time.monotonic() > deadline:
                missing = [n for n in names if n not in self.seen]
                raise TimeoutError(f"{len(missing)} Jobs never appeared, e.g. {missing[:3]}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()


def run_body(name: str) -> dict:
    return trainingrun(name, resources={"gpus": 0}, podAnnotations={"azaion.local/hold": "true"})


def plain_job(name: str) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"annotations": {"azaion.local/hold": "true"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]},
            }
        },
    }


def measure(create, names: list[str], watcher: JobWatcher, job_of) -> list[float]:
    sent: dict[str, float] = {}
    for name in names:
        sent[name] = time.monotonic()
        create(name)
    watcher.wait_for([job_of(n) for n in names])
    return [watcher.seen[job_of(n)] - sent[n] for n in names]


def gone(core: client.CoreV1Api, namespace: str, timeout: float = 120) -> None:
    """Wait until the namespace is deleted, so that the next measurement starts on a quiet cluster."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except client.ApiException as error:
            if error.status == 404:
                return
            raise
        time.sleep(1)


def settle(custom: client.CustomObjectsApi, namespace: str, names: list[str], quiet: float = 3.0) -> None:
    """Wait until every run is Pending and nothing about them changed for ``quiet`` seconds."""
    wanted, last, changed = set(names), None, time.monotonic()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        mine = [r for r in runs if r["metadata"]["name"] in wanted]
        versions = sorted(r["metadata"]["resourceVersion"] for r in mine)
        if versions != last:
            last, changed = versions, time.monotonic()
        pending = all((r.get("status") or {}).get("phase") == "Pending" for r in mine)
        if pending and time.monotonic() - changed >= quiet:
            return
        time.sleep(0.5)


def print_calls(calls: Counter[str] | None, runs: int) -> None:
    if calls is None:
        print("API calls per run: no audit log (start the control plane with hack/cluster.sh up)")
        return
    total = sum(calls.values())
    print(f"API calls per run (burst, until settled): {total / runs:.1f}")
    for call, count in calls.most_common():
        print(f"    {count / runs:5.2f}  {call}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()

    plane = local_plane()
    core, batch, custom, audit = plane.core, plane.batch, plane.custom, plane.audit
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    operator, _ = start_operator(plane.cluster, Path("/tmp") / namespace, interval=5.0)
    watcher = JobWatcher(batch, namespace)
    try:

        def create_run(name: str) -> None:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, run_body(name))

        def create_job(name: str) -> None:
            batch.create_namespaced_job(namespace, plain_job(name))

        # Warm up (watches established, leftovers of earlier runs resumed), then measure.
        measure(create_run, ["warm-up"], watcher, lambda n: f"{n}-a1")
        time.sleep(3)
        rss_idle = rss_mib(operator.pid)
        base_one = measure(create_job, ["direct-1"], watcher, lambda n: n)
        one = measure(create_run, ["single"], watcher, lambda n: f"{n}-a1")
        names = [f"r{i:03d}" for i in range(args.runs)]
        base_many = measure(create_job, [f"direct-{n}" for n in names], watcher, lambda n: n)
        mark, cpu_before = audit.mark(), cpu_seconds(operator.pid)
        many = measure(create_run, names, watcher, lambda n: f"{n}-a1")
        rss_loaded = rss_mib(operator.pid)
        settle(custom, namespace, names)
        cpu_per_run = (cpu_seconds(operator.pid) - cpu_before) / args.runs
        calls = audit.calls_since(mark, {namespace}) if audit.available() else None

        def line(label: str, values: list[float], baseline: list[float]) -> str:
            p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
            b50 = statistics.median(baseline)
            return (
                f"{label:<28} p50 {p50 * 1000:8.1f} ms   p99 {p99 * 1000:8.1f} ms   "
                f"(direct Job p50 {b50 * 1000:6.1f} ms; ratio p50 {p50 / b50:5.1f}x)"
            )

        print(line("1 TrainingRun", one, base_one))
        print(line(f"{args.runs} TrainingRuns (burst)", many, base_many))
        print(f"operator RSS: {rss_idle:.0f} MiB idle, {rss_loaded:.0f} MiB with {args.runs + 1} runs")
        print(f"operator CPU per run (burst, until settled): {cpu_per_run * 1000:.1f} ms")
        print_calls(calls, args.runs)
    finally:
        watcher.stop()
        operator.stop()
        core.delete_namespace(namespace)
        gone(core, namespace)


if __name__ == "__main__":
    main()
