#!/usr/bin/env python3
"""A flowcast worker in ten lines: greets whoever a task names.

    FLOWCAST_API=http://127.0.0.1:8081 FLOWCAST_USER=alice \
        PYTHONPATH=clients/python/src python3 clients/python/examples/worker.py

Register a workflow with a task node on queue "greet" (see README.md), start
a run, and this worker completes its task. Stop it with Ctrl-C: running
tasks finish first.
"""
import os
import time

from flowcast_worker import Worker


def greet(task):
    for step in range(1, 4):
        time.sleep(float(os.environ.get("STEP_SECONDS", "0.05")))
        task.progress(step / 3, f"step {step} of 3")
    name = task.input.get("name", "world") if isinstance(task.input, dict) else "world"
    return {"greeting": f"hello {name}", "by": "python", "attempt": task.attempt}


if __name__ == "__main__":
    Worker(
        os.environ.get("FLOWCAST_API", "http://127.0.0.1:8081"),
        queues=[os.environ.get("FLOWCAST_QUEUE", "greet")],
        handler=greet,
        user=os.environ.get("FLOWCAST_USER", "alice"),
        concurrency=int(os.environ.get("CONCURRENCY", "4")),
    ).run()
