#!/usr/bin/env python3
"""Task throughput and claim -> complete latency with N workers, through
the Python worker library's client (clients/python), against a running
daemon.

Runs of `start -> WIDTH x task (queue "bench") -> end` are posted so that
about CONCURRENCY runs are in flight; WORKERS threads (one keep-alive
connection each) claim up to BATCH tasks at a time (long-polling) and
complete each at once with a tiny output. Reported as one JSON line:

- tasks_per_s: task completions acknowledged by the daemon per second;
- claim_to_complete_ms: per task, from the worker sending the claim that
  got it to the daemon answering its completion (p50, p90, p99, max);
- complete_ms: the completion request alone;
- of a sample of the runs posted, how many had completed at the end.

Usage: scripts/bench-tasks.py --api URL [--workers N] [--width W]
       [--concurrency C] [--batch B] [--duration S] [--user U]
"""
import argparse
import json
import os
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python", "src"))
from flowcast_worker import Client  # noqa: E402


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(len(v) * p / 100))], 3)


def summary(values):
    return {"n": len(values), "p50": pct(values, 50), "p90": pct(values, 90),
            "p99": pct(values, 99), "max": round(max(values), 3) if values else None}


def task_workflow(tag, width):
    nodes = [{"id": "start", "kind": "delay", "ms": 0}]
    mids = [f"t{i}" for i in range(width)]
    nodes += [{"id": m, "kind": "task", "queue": "bench", "depends_on": ["start"],
               "input": "{n: 1}"} for m in mids]
    nodes.append({"id": "end", "kind": "delay", "ms": 0, "depends_on": mids})
    return {"tag": tag, "nodes": nodes}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--user", default=f"bench-{uuid.uuid4().hex[:8]}")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--width", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--label", default="tasks")
    a = ap.parse_args()

    tag = f"bench-tasks-{a.width}"
    # PUT the workflow with the standard library (the worker client only POSTs).
    import http.client
    import urllib.parse
    u = urllib.parse.urlsplit(a.api)
    c = http.client.HTTPConnection(u.hostname, u.port)
    c.request("PUT", f"/api/v1/workflows/{tag}", body=json.dumps(task_workflow(tag, a.width)),
              headers={"Content-Type": "application/json", "X-User-ID": a.user})
    r = c.getresponse()
    if r.status not in (200, 201):
        sys.exit(f"cannot register {tag}: {r.status} {r.read()!r}")
    r.read()

    stop = threading.Event()
    lock = threading.Lock()
    done_tasks = [0]
    cycle_ms, complete_ms = [], []
    posted = {}  # run_id -> post time

    def worker(i):
        cl = Client(a.api, user=a.user)
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                tasks = cl.claim(["bench"], max_tasks=a.batch, wait_ms=1000, worker_id=f"w{i}")
            except Exception as e:
                print(f"claim failed: {e}", file=sys.stderr)
                continue
            for t in tasks:
                t1 = time.perf_counter()
                try:
                    cl.complete(t["task_id"], t["token"], {"ok": True})
                except Exception as e:
                    print(f"complete failed: {e}", file=sys.stderr)
                    continue
                t2 = time.perf_counter()
                with lock:
                    done_tasks[0] += 1
                    cycle_ms.append((t2 - t0) * 1000)
                    complete_ms.append((t2 - t1) * 1000)

    def submitter():
        cl = Client(a.api, user=a.user)
        while not stop.is_set():
            with lock:
                in_flight = len(posted) - done_tasks[0] // a.width
            if in_flight >= a.concurrency:
                time.sleep(0.002)
                continue
            try:
                r = cl.post("/api/v1/runs", {"tag": tag, "inputs": {}})
            except Exception as e:
                print(f"post failed: {e}", file=sys.stderr)
                time.sleep(0.1)
                continue
            with lock:
                posted[r["run_id"]] = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.workers)]
    threads.append(threading.Thread(target=submitter, daemon=True))
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(a.duration)
    with lock:
        tasks_in_window = done_tasks[0]
    elapsed = time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join(5)

    # How long runs took, end to end (a sample of those posted).
    sample = list(posted.items())[:200]
    finished = 0
    for run_id, _ in sample:
        try:
            conn = http.client.HTTPConnection(u.hostname, u.port)
            conn.request("GET", f"/api/v1/runs/{run_id}", headers={"X-User-ID": a.user})
            v = json.loads(conn.getresponse().read())
            if v.get("status") == "completed":
                finished += 1
        except Exception:
            pass
    print(json.dumps({
        "bench": "tasks", "label": a.label, "workers": a.workers, "width": a.width,
        "concurrency": a.concurrency, "batch": a.batch, "duration_s": round(elapsed, 2),
        "tasks_completed": tasks_in_window, "tasks_per_s": round(tasks_in_window / elapsed, 1),
        "runs_posted": len(posted), "sampled_runs_completed": finished, "sampled": len(sample),
        "claim_to_complete_ms": summary(cycle_ms), "complete_ms": summary(complete_ms),
    }))


if __name__ == "__main__":
    main()
