"""The built-in GPU queue at scale: many runs, namespaces and GPU nodes at once.

    .venv/bin/python bench/operator_scale.py [--runs 1000] [--namespaces 10] [--nodes 4] [--gpus-per-node 8]

On the local control plane (kwok plays the nodes; a pod succeeds at once, so
each admitted run finishes and frees its GPUs), it adds GPU nodes, creates
the runs from a few threads across the namespaces (1 or 2 GPUs each, three
priorities), and follows them until every run has succeeded. It prints:

- apply -> first status (the operator took the run in: Queued or Pending),
  p50/p99, and apply -> Job for the runs started without waiting;
- the time to drain the queue;
- the operator's peak RSS, CPU and API calls per run (API server audit log);
- two checks sampled while the queue drains: the GPUs of started runs never
  exceed the allocatable ones, and runs start in the queue's order
  (priority, then arrival): a run started more than ``--grace`` seconds
  after a run behind it counts as overtaken when the operator had taken it
  in (written its first status) more than ``--grace`` seconds before that
  one started. Pairs where it had only been created by then are printed
  apart: the operator cannot order runs it has not heard of yet.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client, watch

from azaion_devtools.benchkit import cpu_seconds, local_plane, percentile, rss_mib
from azaion_devtools.cluster import KWOK_NODE_ANNOTATION, start_operator, trainingrun

GROUP, VERSION, PLURAL = "ai.azaion.com", "v1alpha1", "trainingruns"
LABEL = "ai.azaion.com/trainingrun"


def gpu_node(name: str, gpus: int) -> dict:
    resources = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "type": "kwok", "nvidia.com/gpu.present": "true"},
        },
        "spec": {},
        "status": {"capacity": resources, "allocatable": resources},
    }


class Follower:
    """Watches every run and every training Job: when each run was first seen with a
    status, when its first Job appeared (in admission order), when it succeeded, and
    the GPUs each started run holds now (sampled without a listing of its own: a
    listing of a thousand runs twice a second would load the API server more than
    the operator does)."""

    def __init__(self, custom: client.CustomObjectsApi, batch: client.BatchV1Api) -> None:
        self.first_status: dict[tuple[str, str], float] = {}
        self.succeeded: dict[tuple[str, str], float] = {}
        self.job_seen: dict[tuple[str, str], float] = {}
        self.admission_order: list[tuple[str, str]] = []
        self.holding: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        for target in (self._runs, self._jobs):
            threading.Thread(target=self._follow, args=(target, custom, batch), daemon=True).start()
        time.sleep(0.5)

    def _follow(self, target: Callable[..., None], *args: object) -> None:
        """Watch again whenever a watch ends or breaks: first-seen times only move later."""
        while not self._stop.is_set():
            try:
                target(*args)
            except Exception:  # a broken watch is started again
                time.sleep(0.5)

    def _runs(self, custom: client.CustomObjectsApi, _: client.BatchV1Api) -> None:
        stream = watch.Watch().stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, timeout_seconds=300)
        for event in stream:
            run = event["object"]
            key = (run["metadata"]["namespace"], run["metadata"]["name"])
            phase = (run.get("status") or {}).get("phase")
            now = time.monotonic()
            status = run.get("status") or {}
            started = phase in ("Pending", "Running") and status.get("jobName") and event["type"] != "DELETED"
            with self._lock:
                self.holding[key] = run["spec"]["resources"]["gpus"] if started else 0
                if phase:
                    self.first_status.setdefault(key, now)
                if phase == "Succeeded":
                    self.succeeded.setdefault(key, now)
            if self._stop.is_set():
                return

    def _jobs(self, _: client.CustomObjectsApi, batch: client.BatchV1Api) -> None:
        stream = watch.Watch().stream(batch.list_job_for_all_namespaces, label_selector=LABEL, timeout_seconds=300)
        for event in stream:
            job = event["object"].metadata
            key = (job.namespace, job.labels[LABEL])
            with self._lock:
                if key not in self.job_seen:
                    self.job_seen[key] = time.monotonic()
                    self.admission_order.append(key)
            if self._stop.is_set():
                return

    def stop(self) -> None:
        self._stop.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--grace", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    plane = local_plane()
    core, batch, custom, audit = plane.core, plane.batch, plane.custom, plane.audit

    tag = uuid.uuid4().hex[:6]
    namespaces = [f"scale-{tag}-{i}" for i in range(args.namespaces)]
    nodes = [f"scale-{tag}-gpu-{i}" for i in range(args.nodes)]
    for name in nodes:
        core.create_node(gpu_node(name, args.gpus_per_node))
    for namespace in namespaces:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": "azaion-data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            },
        )
    time.sleep(3)  # the nodes Ready (kwok), the claims bound
    allocatable = sum(
        int((n.status.allocatable or {}).get("nvidia.com/gpu", 0))
        for n in core.list_node().items
        if not n.spec.unschedulable
    )

    operator, _ = start_operator(plane.cluster, Path("/tmp") / f"scale-{tag}", interval=2.0)
    follower = Follower(custom, batch)
    runs = []
    for i in range(args.runs):
        runs.append(
            {
                "namespace": namespaces[i % len(namespaces)],
                "name": f"r{i:04d}",
                "gpus": rng.choice([1, 1, 1, 2]),
                "priority": rng.choice([0, 0, 5, 10]),
            }
        )
    sent: dict[tuple[str, str], float] = {}
    created: dict[tuple[str, str], float] = {}
    arrival: dict[tuple[str, str], str] = {}
    over_allocation: list[tuple[int, int]] = []
    samples = 0
    peak_rss = rss_mib(operator.pid)
    stop_sampling = threading.Event()

    def sample() -> None:
        nonlocal samples, peak_rss
        while not stop_sampling.wait(0.5):
            held = sum(gpus for (namespace, _), gpus in list(follower.holding.items()) if namespace in namespaces)
            samples += 1
            if held > allocatable:
                over_allocation.append((held, allocatable))
            peak_rss = max(peak_rss, rss_mib(operator.pid))

    def create(run: dict) -> None:
        key = (run["namespace"], run["name"])
        body = trainingrun(run["name"], resources={"gpus": run["gpus"]}, priority=run["priority"])
        sent[key] = time.monotonic()
        stored = custom.create_namespaced_custom_object(GROUP, VERSION, run["namespace"], PLURAL, body)
        created[key] = time.monotonic()
        arrival[key] = stored["metadata"]["creationTimestamp"]  # what the queue orders by

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    mark, cpu_before, started = audit.mark(), cpu_seconds(operator.pid), time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(create, runs))
        burst_seconds = time.monotonic() - started
        deadline = time.monotonic() + 1800
        while len([k for k in sent if k in follower.succeeded]) < len(runs):
            if time.monotonic() > deadline or not operator.alive():
                raise SystemExit(f"only {len(follower.succeeded)} of {len(runs)} runs succeeded")
            time.sleep(0.5)
        drained = time.monotonic() - started
        stop_sampling.set()
        cpu_per_run = (cpu_seconds(operator.pid) - cpu_before) / len(runs)
        calls = audit.calls_since(mark, set(namespaces)) if audit.available() else None
    finally:
        stop_sampling.set()
        follower.stop()
        operator.stop()

    taken_in = [follower.first_status[k] - sent[k] for k in sent if k in follower.first_status]
    at_once = [follower.job_seen[k] - sent[k] for k in sent if follower.job_seen.get(k, 1e18) - sent[k] < 5]
    order_key = {
        (r["namespace"], r["name"]): (-r["priority"], arrival[(r["namespace"], r["name"])], r["namespace"], r["name"])
        for r in runs
    }
    # An overtaking: Y stands ahead of X in the queue's order and started more than
    # --grace after X (runs admitted by one plan start within moments of each other,
    # in any order), although the operator had taken Y in (written its first status)
    # more than --grace before X's Job appeared. Pairs where Y had only been created
    # by then are counted apart: during a burst the operator hears runs seconds after
    # their creation, and cannot order a run it has not heard of.
    overtaken, unheard, admitted = 0, 0, [key for key in follower.admission_order if key in order_key]
    started_at = {key: index for index, key in enumerate(admitted)}
    for x in admitted:
        for y in order_key:
            ahead = order_key[y] < order_key[x] and started_at.get(y, 1e9) > started_at[x]
            later = follower.job_seen.get(y, 1e18) - follower.job_seen[x] > args.grace
            if not (ahead and later and created[y] + args.grace < follower.job_seen[x]):
                continue
            if follower.first_status.get(y, 1e18) + args.grace < follower.job_seen[x]:
                overtaken += 1
            else:
                unheard += 1

    print(f"{len(runs)} runs in {len(namespaces)} namespaces, {allocatable} GPUs on {len(nodes) + 1} nodes")
    print(f"created in {burst_seconds:.1f} s ({len(runs) / burst_seconds:.0f} runs/s from 4 threads)")
    print(
        f"apply -> first status     p50 {percentile(taken_in, 0.5) * 1000:7.1f} ms   "
        f"p99 {percentile(taken_in, 0.99) * 1000:7.1f} ms"
    )
    print(
        f"apply -> Job (started at once, {len(at_once)} runs)  p50 {percentile(at_once, 0.5) * 1000:7.1f} ms   "
        f"p99 {percentile(at_once, 0.99) * 1000:7.1f} ms"
    )
    print(f"queue drained in {drained:.1f} s ({len(runs) / drained:.1f} runs/s)")
    print(f"operator: peak RSS {peak_rss:.0f} MiB, CPU {cpu_per_run * 1000:.1f} ms per run")
    if calls is not None:
        total = sum(calls.values())
        print(f"API calls per run (create to Succeeded): {total / len(runs):.1f}")
        for call, count in calls.most_common(8):
            print(f"    {count / len(runs):5.2f}  {call}")
    print(f"check: started GPUs above allocatable in {len(over_allocation)} of {samples} samples")
    print(
        f"check: pairs started against priority-then-arrival, the run overtaken taken in "
        f"> {args.grace:.0f} s before: {overtaken}"
    )
    print(f"       (and with the run overtaken created but not yet taken in: {unheard})")
    for namespace in namespaces:
        core.delete_namespace(namespace)
    for name in nodes:
        core.delete_node(name)


if __name__ == "__main__":
    main()
