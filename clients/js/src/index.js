// Workers for flowcast `task` nodes, for Node 18+ (the platform `fetch`,
// no dependencies).
//
// A Worker claims tasks from the daemon's queues (long-polling), runs a
// handler on each one's input, heartbeats while the handler runs (carrying
// the progress it reports), and completes or fails the task:
//
//   import { Worker } from "flowcast-worker";
//   const w = new Worker({
//     api: "http://127.0.0.1:8081", user: "alice", queues: ["greet"],
//     handler: async (task) => {
//       task.progress(0.5, "thinking");
//       return { greeting: `hello ${task.input.name}` };
//     },
//   });
//   await w.run(); // until SIGTERM/SIGINT; running tasks finish first
//
// - `concurrency` handlers run at once; one poller claims as many tasks as
//   there are free slots, so an idle worker is one parked request.
// - While a handler runs, its task is heartbeated every third of its lease,
//   and at once when it reports progress (`task.progress`).
// - A returned value completes the task; a thrown error fails the attempt
//   (retryable, unless it is `new TaskFailed(msg, { retryable: false })`).
// - A refused heartbeat (lease lapsed, run cancelled) means the task is no
//   longer this worker's: `task.cancelled` turns true, `task.signal` aborts,
//   and the result is dropped.
// - Network errors and 5xx answers are retried with exponential backoff.

import os from "node:os";
import { randomUUID } from "node:crypto";

/** The daemon refused a request (a 4xx, or a 5xx after the retries). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message} (HTTP ${status})`);
    this.status = status;
    this.code = code;
    this.detail = message;
  }
}

/** Throw from a handler to fail the attempt; `{ retryable: false }` fails
 * the node without another attempt. */
export class TaskFailed extends Error {
  constructor(message, { retryable = true } = {}) {
    super(message);
    this.retryable = retryable;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The worker protocol over HTTP. `user` is sent as `X-User-ID`,
 * `token` as a bearer token. */
export class Client {
  constructor(api, { user, token, timeoutMs = 75_000, retryForMs = 60_000, backoffMinMs = 100, backoffMaxMs = 5_000 } = {}) {
    const url = new URL(api);
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new TypeError(`api must be an http(s) URL, not ${api}`);
    }
    this.base = api.replace(/\/+$/, "");
    this.headers = { "content-type": "application/json", accept: "application/json" };
    if (user !== undefined) this.headers["x-user-id"] = user;
    if (token !== undefined) this.headers.authorization = `Bearer ${token}`;
    Object.assign(this, { timeoutMs, retryForMs, backoffMinMs, backoffMaxMs });
  }

  /** Claims up to `max` tasks, waiting up to `waitMs` for one. */
  async claim(queues, { max = 1, waitMs = 10_000, workerId, retryForMs } = {}) {
    const body = { queues, max, wait_ms: waitMs };
    if (workerId) body.worker_id = workerId;
    return (await this.post("/api/v1/tasks/claim", body, { retryForMs })).tasks;
  }

  /** Extends the lease; `progress` (0..1) and `message` are published. */
  heartbeat(taskId, token, { progress, message } = {}) {
    const body = { token };
    if (progress !== undefined && progress !== null) body.progress = progress;
    if (message !== undefined && message !== null) body.message = message;
    return this.post(`/api/v1/tasks/${taskId}/heartbeat`, body);
  }

  /** Completes the task with `output` (any JSON value). */
  complete(taskId, token, output) {
    return this.post(`/api/v1/tasks/${taskId}/complete`, { token, output: output ?? null });
  }

  /** Fails this attempt; the node's retry policy decides what follows. */
  fail(taskId, token, error, { retryable = true } = {}) {
    return this.post(`/api/v1/tasks/${taskId}/fail`, { token, error: String(error), retryable });
  }

  /** POSTs `body` as JSON, retrying network errors and 5xx. */
  async post(path, body, { retryForMs } = {}) {
    const deadline = Date.now() + (retryForMs ?? this.retryForMs);
    let delay = this.backoffMinMs;
    for (;;) {
      let failure;
      try {
        const res = await fetch(this.base + path, {
          method: "POST",
          headers: this.headers,
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(this.timeoutMs),
        });
        const text = await res.text();
        let reply = {};
        try {
          reply = text ? JSON.parse(text) : {};
        } catch {
          reply = {};
        }
        if (res.status < 500) {
          if (res.status >= 400) {
            const e = reply.error ?? {};
            throw new ApiError(res.status, e.code ?? "http_error", e.message ?? text);
          }
          return reply;
        }
        failure = new ApiError(res.status, "unavailable", text);
      } catch (e) {
        if (e instanceof ApiError) throw e;
        failure = e;
      }
      if (Date.now() + delay > deadline) throw failure;
      await sleep(delay * (0.5 + Math.random() / 2));
      delay = Math.min(delay * 2, this.backoffMaxMs);
    }
  }
}

/** One claimed task, as the handler sees it. */
export class Task {
  constructor(data, beat) {
    this.taskId = data.task_id;
    this.token = data.token;
    this.runId = data.run_id;
    this.nodeId = data.node_id;
    this.attempt = data.attempt;
    this.queue = data.queue;
    this.input = data.input;
    this.leaseMs = data.lease_ms;
    this.cancelled = false;
    this._abort = new AbortController();
    /** Aborted when the task is no longer this worker's. */
    this.signal = this._abort.signal;
    this._beat = beat;
    this._report = null;
  }

  /** Reports how far the handler is (0..1), with an optional message;
   * sent with a heartbeat at once. */
  progress(progress, message) {
    this._report = { progress: Math.min(1, Math.max(0, Number(progress))), message };
    this._beat();
  }

  _cancel() {
    this.cancelled = true;
    this._abort.abort(new Error("the task is no longer this worker's"));
  }
}

/** Runs `handler(task)` on the tasks of `queues`. */
export class Worker {
  constructor({ api, user, token, queues, handler, concurrency = 1, workerId, waitMs = 10_000, graceMs = 30_000, client, log = console }) {
    if (!(concurrency >= 1)) throw new RangeError("concurrency must be at least 1");
    this.client = client ?? new Client(api, { user, token });
    Object.assign(this, { queues, handler, concurrency, waitMs, graceMs, log });
    this.workerId = workerId ?? `${os.hostname()}-${randomUUID().slice(0, 8)}`;
    this.running = new Set();
    this.stopping = false;
    this.completed = 0;
    this.failed = 0;
    this._slotFreed = null;
  }

  /** Works until `stop()`; resolves once running handlers finished (or
   * the grace passed). */
  async start() {
    const poller = this._poll();
    await poller;
    const deadline = Date.now() + this.graceMs;
    while (this.running.size > 0 && Date.now() < deadline) {
      await Promise.race([...this.running, sleep(Math.max(0, deadline - Date.now()))]);
    }
    if (this.running.size > 0) {
      this.log.warn(`flowcast: stopping with ${this.running.size} tasks unfinished; their leases will lapse`);
    }
  }

  /** `start()` that stops on SIGTERM or SIGINT. */
  async run() {
    const stop = () => this.stop();
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
    try {
      await this.start();
    } finally {
      process.off("SIGTERM", stop);
      process.off("SIGINT", stop);
    }
  }

  /** Stops claiming; running handlers get `graceMs`. */
  stop() {
    this.stopping = true;
    this._slotFreed?.();
  }

  async _poll() {
    while (!this.stopping) {
      const free = this.concurrency - this.running.size;
      if (free <= 0) {
        await new Promise((r) => (this._slotFreed = r));
        continue;
      }
      let tasks = [];
      try {
        tasks = await this.client.claim(this.queues, {
          max: free, waitMs: this.waitMs, workerId: this.workerId, retryForMs: 10_000,
        });
      } catch (e) {
        this.log.warn(`flowcast: claim failed: ${e.message}`);
        await sleep(1000);
      }
      for (const data of tasks) {
        const p = this._work(data).finally(() => {
          this.running.delete(p);
          this._slotFreed?.();
        });
        this.running.add(p);
      }
    }
  }

  async _work(data) {
    let inFlight = null;
    let again = false;
    const beat = () => {
      if (inFlight) {
        again = true;
        return;
      }
      const report = task._report ?? {};
      task._report = null;
      inFlight = this.client
        .heartbeat(task.taskId, task.token, report)
        .catch((e) => {
          if (e instanceof ApiError && (e.status === 409 || e.status === 404)) {
            this.log.warn(`flowcast: task ${task.taskId}: ${e.detail}`);
            task._cancel();
          } else {
            this.log.warn(`flowcast: task ${task.taskId}: heartbeat failed: ${e.message}`);
          }
        })
        .finally(() => {
          inFlight = null;
          if (again && !task.cancelled) {
            again = false;
            beat();
          }
        });
    };
    const task = new Task(data, beat);
    const timer = setInterval(beat, Math.max(task.leaseMs / 3, 20));
    let outcome;
    try {
      outcome = { output: await this.handler(task) };
    } catch (e) {
      outcome = { error: e };
    }
    clearInterval(timer);
    while (inFlight) await inFlight;
    if (task._report && !task.cancelled) {
      beat();
      while (inFlight) await inFlight;
    }
    if (task.cancelled) {
      this.log.warn(`flowcast: task ${task.taskId} is no longer ours; dropping its result`);
      return;
    }
    try {
      if ("output" in outcome) {
        await this.client.complete(task.taskId, task.token, outcome.output);
        this.completed += 1;
      } else {
        const e = outcome.error;
        const retryable = e instanceof TaskFailed ? e.retryable : true;
        const text = e instanceof TaskFailed ? e.message : `${e?.name ?? "Error"}: ${e?.message ?? e}`;
        await this.client.fail(task.taskId, task.token, text, { retryable });
        this.failed += 1;
      }
    } catch (e) {
      this.log.warn(`flowcast: task ${task.taskId}: report failed: ${e.message}`);
    }
  }
}
