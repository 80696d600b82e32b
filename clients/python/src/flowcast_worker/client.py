"""The worker protocol over HTTP: claim, heartbeat, complete, fail.

One keep-alive connection per thread; requests that fail on the network
(connection refused or reset, timeouts) or with a 5xx are retried with
exponential backoff until ``retry_for`` seconds have passed. A 4xx is the
daemon's final word and is raised as :class:`ApiError` at once.
"""

import http.client
import json
import random
import threading
import time
import urllib.parse


class ApiError(Exception):
    """The daemon refused a request (a 4xx, or a 5xx after the retries)."""

    def __init__(self, status, code, message):
        super().__init__(f"{code}: {message} (HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class Client:
    """A flowcast API client for workers.

    ``user`` is sent as ``X-User-ID`` (``--auth header``), ``token`` as a
    bearer token (``--auth jwt``).
    """

    def __init__(self, api, user=None, token=None, timeout=75.0, retry_for=60.0,
                 backoff_min=0.1, backoff_max=5.0):
        url = urllib.parse.urlsplit(api.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"api must be an http(s) URL, not {api!r}")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port
        self._base = url.path
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if user is not None:
            self._headers["X-User-ID"] = user
        if token is not None:
            self._headers["Authorization"] = "Bearer " + token
        self.timeout = timeout
        self.retry_for = retry_for
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._local = threading.local()

    # -- the protocol -----------------------------------------------------

    def claim(self, queues, max_tasks=1, wait_ms=10_000, worker_id=None, retry_for=None):
        """Claims up to ``max_tasks`` tasks, waiting up to ``wait_ms`` for one."""
        body = {"queues": list(queues), "max": max_tasks, "wait_ms": wait_ms}
        if worker_id:
            body["worker_id"] = worker_id
        return self.post("/api/v1/tasks/claim", body, retry_for=retry_for)["tasks"]

    def heartbeat(self, task_id, token, progress=None, message=None):
        """Extends the lease; ``progress`` (0..1) and ``message`` are published."""
        body = {"token": token}
        if progress is not None:
            body["progress"] = progress
        if message is not None:
            body["message"] = message
        return self.post(f"/api/v1/tasks/{task_id}/heartbeat", body)

    def complete(self, task_id, token, output):
        """Completes the task with ``output`` (any JSON value)."""
        return self.post(f"/api/v1/tasks/{task_id}/complete", {"token": token, "output": output})

    def fail(self, task_id, token, error, retryable=True):
        """Fails this attempt; the node's retry policy decides what follows."""
        body = {"token": token, "error": str(error), "retryable": bool(retryable)}
        return self.post(f"/api/v1/tasks/{task_id}/fail", body)

    # -- HTTP -------------------------------------------------------------

    def post(self, path, body, retry_for=None):
        """POSTs ``body`` as JSON; answers the decoded JSON reply."""
        payload = json.dumps(body).encode()
        deadline = time.monotonic() + (self.retry_for if retry_for is None else retry_for)
        delay = self.backoff_min
        while True:
            try:
                status, data = self._send(path, payload)
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                failure = e
            else:
                if status < 500:
                    reply = _decode(data)
                    if status >= 400:
                        err = reply.get("error", {}) if isinstance(reply, dict) else {}
                        raise ApiError(status, err.get("code", "http_error"),
                                       err.get("message", data.decode("utf-8", "replace")))
                    return reply
                failure = ApiError(status, "unavailable", data.decode("utf-8", "replace"))
            if time.monotonic() + delay > deadline:
                raise failure
            time.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.backoff_max)

    def close(self):
        """Closes this thread's connection (each thread has its own)."""
        self._drop()

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _send(self, path, payload):
        conn = self._conn()
        conn.request("POST", self._base + path, body=payload, headers=self._headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.getheader("Connection", "").lower() == "close":
            self._drop()
        return resp.status, data


def _decode(data):
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return {}
