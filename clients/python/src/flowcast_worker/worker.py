"""A worker: claims tasks, runs a handler on each, heartbeats while it runs.

- ``concurrency`` tasks run at once, each on a thread of its own; one
  poller claims as many as there are free slots (long-polling, so an idle
  worker costs the daemon a parked request, and a new task is taken the
  moment it is queued).
- While a handler runs, its task is heartbeated every third of its lease,
  and at once when the handler reports progress (``task.progress``); the
  daemon publishes progress as ``node_progress`` events.
- The handler's return value completes the task; an exception fails the
  attempt (retryable, unless it is ``TaskFailed(..., retryable=False)``),
  and the node's retry policy decides what follows.
- A task whose heartbeat is refused (its lease lapsed, its run was
  cancelled) is no longer this worker's: ``task.cancelled`` turns true and
  its result is dropped.
- Network errors and 5xx answers are retried with backoff (see
  :class:`~flowcast_worker.client.Client`).
- :meth:`Worker.stop` (and SIGTERM/SIGINT under :meth:`Worker.run`) stops
  claiming and lets running handlers finish within ``grace`` seconds.
"""

import logging
import signal
import socket
import threading
import time
import uuid

from .client import ApiError, Client

log = logging.getLogger("flowcast_worker")


class TaskFailed(Exception):
    """Raise from a handler to fail the attempt; ``retryable=False`` fails
    the node without another attempt."""

    def __init__(self, message, retryable=True):
        super().__init__(message)
        self.retryable = retryable


class Task:
    """One claimed task, as the handler sees it."""

    def __init__(self, data, worker):
        self.task_id = data["task_id"]
        self.token = data["token"]
        self.run_id = data["run_id"]
        self.node_id = data["node_id"]
        self.attempt = data["attempt"]
        self.queue = data["queue"]
        self.input = data["input"]
        self.lease_ms = data["lease_ms"]
        self._worker = worker
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._report = None
        self.cancelled = False

    def progress(self, progress, message=None):
        """Reports how far the handler is (0..1), with an optional message;
        sent with the next heartbeat, at once."""
        progress = min(1.0, max(0.0, float(progress)))
        with self._lock:
            self._report = (progress, message)
        self._wake.set()

    def _take_report(self):
        with self._lock:
            report, self._report = self._report, None
        return report

    def __repr__(self):
        return f"Task({self.task_id}, node={self.node_id!r}, attempt={self.attempt})"


class Worker:
    """Runs ``handler(task)`` on the tasks of ``queues``.

    ``api`` is the daemon's API URL; ``user`` or ``token`` say whom the
    worker acts for (it sees only that user's tasks).
    """

    def __init__(self, api, queues, handler, user=None, token=None, concurrency=1,
                 worker_id=None, wait_ms=10_000, grace=30.0, client=None):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client or Client(api, user=user, token=token)
        self.queues = list(queues)
        self.handler = handler
        self.concurrency = concurrency
        self.worker_id = worker_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.wait_ms = wait_ms
        self.grace = grace
        self._stopping = threading.Event()
        self._slots = threading.Semaphore(concurrency)
        self._running = set()
        self._lock = threading.Lock()
        self.completed = 0
        self.failed = 0

    # -- life -------------------------------------------------------------

    def run(self, install_signals=True):
        """Works until :meth:`stop` (or SIGTERM/SIGINT); returns once the
        running handlers finished (or the grace passed)."""
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        poller = threading.Thread(target=self._poll, name="flowcast-poll", daemon=True)
        poller.start()
        while not self._stopping.wait(0.2):
            pass
        deadline = time.monotonic() + self.grace
        poller.join(max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    break
            time.sleep(0.05)
        with self._lock:
            left = len(self._running)
        if left:
            log.warning("stopping with %d tasks unfinished; their leases will lapse", left)

    def start(self):
        """Runs :meth:`run` on a background thread; returns the thread."""
        t = threading.Thread(target=self.run, kwargs={"install_signals": False},
                             name="flowcast-worker", daemon=True)
        t.start()
        return t

    def stop(self):
        """Stops claiming; running handlers get ``grace`` seconds."""
        self._stopping.set()

    # -- claiming ---------------------------------------------------------

    def _poll(self):
        while not self._stopping.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue
            free = 1
            while free < self.concurrency and self._slots.acquire(blocking=False):
                free += 1
            try:
                tasks = self.client.claim(self.queues, max_tasks=free, wait_ms=self.wait_ms,
                                          worker_id=self.worker_id, retry_for=10.0)
            except Exception as e:  # the daemon is unreachable or refused
                log.warning("claim failed: %s", e)
                tasks = []
                self._stopping.wait(1.0)
            for data in tasks:
                task = Task(data, self)
                with self._lock:
                    self._running.add(task)
                threading.Thread(target=self._work, args=(task,), daemon=True,
                                 name=f"flowcast-{task.node_id}").start()
            for _ in range(free - len(tasks)):
                self._slots.release()
        self.client.close()

    # -- one task ---------------------------------------------------------

    def _work(self, task):
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(task, done), daemon=True)
        beat.start()
        try:
            try:
                output = self.handler(task)
                outcome = ("complete", output)
            except TaskFailed as e:
                outcome = ("fail", e, e.retryable)
            except Exception as e:  # the handler's failure is the attempt's
                log.exception("task %s failed", task.task_id)
                outcome = ("fail", e, True)
            done.set()
            task._wake.set()
            beat.join()
            if task.cancelled:
                log.info("task %s is no longer ours; dropping its result", task.task_id)
                return
            try:
                if outcome[0] == "complete":
                    self.client.complete(task.task_id, task.token, outcome[1])
                    self.completed += 1
                else:
                    error = outcome[1]
                    text = f"{type(error).__name__}: {error}" if not isinstance(error, TaskFailed) else str(error)
                    self.client.fail(task.task_id, task.token, text, retryable=outcome[2])
                    self.failed += 1
            except ApiError as e:
                log.warning("task %s: report refused: %s", task.task_id, e)
            except Exception as e:
                log.warning("task %s: report failed: %s", task.task_id, e)
        finally:
            self.client.close()
            with self._lock:
                self._running.discard(task)
            self._slots.release()

    def _heartbeat(self, task, done):
        interval = max(task.lease_ms / 3000.0, 0.02)
        while True:
            task._wake.wait(interval)
            task._wake.clear()
            report = task._take_report()
            if done.is_set() and report is None:
                self.client.close()
                return
            progress, message = report if report else (None, None)
            try:
                self.client.heartbeat(task.task_id, task.token, progress, message)
            except ApiError as e:
                if e.status == 409 or e.status == 404:
                    task.cancelled = True
                    log.warning("task %s: %s", task.task_id, e.message)
                    self.client.close()
                    return
                log.warning("task %s: heartbeat failed: %s", task.task_id, e)
            except Exception as e:
                log.warning("task %s: heartbeat failed: %s", task.task_id, e)
            if done.is_set():
                self.client.close()
                return
