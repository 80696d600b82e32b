"""Unit tests of the worker library against an in-process fake daemon
(the real daemon is exercised by the Rust integration tests, tests/workers.rs).

Run: python3 -m unittest discover -s clients/python/tests
"""
import json
import logging
import os
import socket
import sys
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from flowcast_worker import ApiError, Client, TaskFailed, Worker  # noqa: E402

# The worker logs handlers' failures and refused reports; the tests cause
# them on purpose.
logging.getLogger("flowcast_worker").setLevel(logging.CRITICAL)


class FakeDaemon:
    """Just enough of the worker protocol, with scripted failures."""

    def __init__(self, port=0):
        self.lock = threading.Lock()
        self.queue = []
        self.calls = []
        self.fail_next = 0  # answer this many requests with 503
        self.refuse_heartbeats = False
        self.users = []
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                status, reply = daemon.handle(self.path, body, self.headers)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def add(self, n, lease_ms=300):
        with self.lock:
            for i in range(n):
                self.queue.append({"task_id": f"t{len(self.calls)}-{i}-{time.time_ns()}",
                                   "token": "tok", "run_id": "r", "node_id": f"n{i}",
                                   "attempt": 1, "queue": "q", "input": {"i": i},
                                   "lease_ms": lease_ms})

    def handle(self, path, body, headers):
        with self.lock:
            self.calls.append((path, body))
            self.users.append(headers.get("X-User-ID"))
            if self.fail_next > 0:
                self.fail_next -= 1
                return 503, {"error": {"code": "unavailable", "message": "try again"}}
            if path == "/api/v1/tasks/claim":
                n = body.get("max", 1)
                got, self.queue = self.queue[:n], self.queue[n:]
                if not got:
                    time.sleep(min(body.get("wait_ms", 0), 50) / 1000)
                return 200, {"tasks": got}
            if path.endswith("/heartbeat") and self.refuse_heartbeats:
                return 409, {"error": {"code": "stale_token", "message": "cancelled"}}
            if body.get("token") != "tok":
                return 422, {"error": {"code": "invalid_body", "message": "token"}}
            return 200, {"ok": True}

    def reports(self, verb):
        with self.lock:
            return [b for p, b in self.calls if p.endswith("/" + verb)]


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


class WorkerTest(unittest.TestCase):
    def setUp(self):
        self.d = FakeDaemon()

    def tearDown(self):
        self.d.close()

    def worker(self, handler, **kw):
        kw.setdefault("wait_ms", 20)
        return Worker(self.d.url(), ["q"], handler, user="ann", grace=5, **kw)

    def test_completes_with_the_handlers_output_and_reports_progress(self):
        def handler(task):
            task.progress(0.5, "half")
            time.sleep(0.1)
            return {"double": task.input["i"] * 2}

        self.d.add(1)
        w = self.worker(handler)
        t = w.start()
        wait_for(lambda: self.d.reports("complete"))
        w.stop()
        t.join(10)
        self.assertEqual(self.d.reports("complete")[0]["output"], {"double": 0})
        beats = self.d.reports("heartbeat")
        self.assertTrue(any(b.get("progress") == 0.5 and b.get("message") == "half" for b in beats), beats)
        self.assertTrue(all(u == "ann" for u in self.d.users))

    def test_a_failing_handler_fails_the_attempt_retryable_or_not(self):
        def handler(task):
            if task.input["i"] == 0:
                raise ValueError("boom")
            raise TaskFailed("bad input", retryable=False)

        self.d.add(2)
        w = self.worker(handler, concurrency=2)
        t = w.start()
        wait_for(lambda: len(self.d.reports("fail")) == 2)
        w.stop()
        t.join(10)
        fails = sorted(self.d.reports("fail"), key=lambda b: b["retryable"])
        self.assertEqual((fails[0]["error"], fails[0]["retryable"]), ("bad input", False))
        self.assertIn("boom", fails[1]["error"])
        self.assertTrue(fails[1]["retryable"])

    def test_runs_up_to_concurrency_handlers_at_once(self):
        lock = threading.Lock()
        now = [0, 0]

        def handler(task):
            with lock:
                now[0] += 1
                now[1] = max(now[1], now[0])
            time.sleep(0.2)
            with lock:
                now[0] -= 1
            return None

        self.d.add(6)
        w = self.worker(handler, concurrency=3)
        t = w.start()
        wait_for(lambda: len(self.d.reports("complete")) == 6)
        w.stop()
        t.join(10)
        self.assertEqual(now[1], 3)
        self.assertLessEqual(max(c[1].get("max", 1) for c in self.d.calls if c[0].endswith("claim")), 3)

    def test_a_refused_heartbeat_drops_the_result(self):
        self.d.refuse_heartbeats = True
        seen = []

        def handler(task):
            task.progress(0.1)
            wait_for(lambda: task.cancelled)
            seen.append(task.cancelled)
            return "late"

        self.d.add(1)
        w = self.worker(handler)
        t = w.start()
        wait_for(lambda: seen)
        time.sleep(0.1)
        w.stop()
        t.join(10)
        self.assertEqual(self.d.reports("complete"), [])

    def test_stop_lets_a_running_handler_finish(self):
        started = threading.Event()

        def handler(task):
            started.set()
            time.sleep(0.5)
            return "done"

        self.d.add(1)
        w = self.worker(handler)
        t = w.start()
        started.wait(10)
        w.stop()
        t.join(10)
        self.assertFalse(t.is_alive())
        self.assertEqual([b["output"] for b in self.d.reports("complete")], ["done"])


class ClientTest(unittest.TestCase):
    def test_retries_5xx_and_network_errors_then_raises_4xx(self):
        d = FakeDaemon()
        try:
            d.fail_next = 2
            c = Client(d.url(), user="ann", backoff_min=0.01)
            self.assertEqual(c.claim(["q"], wait_ms=0), [])
            with self.assertRaises(ApiError) as e:
                c.complete("t", "wrong", 1)
            self.assertEqual((e.exception.status, e.exception.code), (422, "invalid_body"))
        finally:
            c.close()
            d.close()
        # Nobody listens yet: the client retries until the daemon is up.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        c = Client(f"http://127.0.0.1:{port}", user="ann", backoff_min=0.05, retry_for=20)
        later = {}

        def start_late():
            time.sleep(0.3)
            later["d"] = FakeDaemon(port)

        threading.Thread(target=start_late).start()
        try:
            self.assertEqual(c.claim(["q"], wait_ms=0), [])
        finally:
            c.close()
            wait_for(lambda: "d" in later)
            later["d"].close()

    def test_a_bad_url_is_refused(self):
        with self.assertRaises(ValueError):
            Client("ftp://x")


if __name__ == "__main__":
    unittest.main()
