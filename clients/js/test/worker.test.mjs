// Unit tests of the worker library against an in-process fake daemon (the
// real daemon is exercised by the Rust integration tests, tests/workers.rs).
// Run: node --test clients/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";

import { ApiError, Client, TaskFailed, Worker } from "../src/index.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await sleep(10);
  }
}

/** Just enough of the worker protocol, with scripted failures. */
async function fakeDaemon(port = 0) {
  const d = { queue: [], calls: [], failNext: 0, refuseHeartbeats: false, users: [] };
  d.server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", async () => {
      const b = body ? JSON.parse(body) : {};
      d.calls.push([req.url, b]);
      d.users.push(req.headers["x-user-id"]);
      const answer = (status, v) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(v));
      };
      if (d.failNext > 0) {
        d.failNext -= 1;
        return answer(503, { error: { code: "unavailable", message: "try again" } });
      }
      if (req.url === "/api/v1/tasks/claim") {
        const got = d.queue.splice(0, b.max ?? 1);
        if (got.length === 0) await sleep(Math.min(b.wait_ms ?? 0, 50));
        return answer(200, { tasks: got });
      }
      if (req.url.endsWith("/heartbeat") && d.refuseHeartbeats) {
        return answer(409, { error: { code: "stale_token", message: "cancelled" } });
      }
      if (b.token !== "tok") return answer(422, { error: { code: "invalid_body", message: "token" } });
      return answer(200, { ok: true });
    });
  });
  await new Promise((r) => d.server.listen(port, "127.0.0.1", r));
  d.url = `http://127.0.0.1:${d.server.address().port}`;
  d.add = (n, leaseMs = 300) => {
    for (let i = 0; i < n; i++) {
      d.queue.push({ task_id: `t${d.calls.length}-${i}-${Math.random()}`, token: "tok", run_id: "r",
        node_id: `n${i}`, attempt: 1, queue: "q", input: { i }, lease_ms: leaseMs });
    }
  };
  d.reports = (verb) => d.calls.filter(([p]) => p.endsWith(`/${verb}`)).map(([, b]) => b);
  d.close = () => new Promise((r) => { d.server.closeAllConnections?.(); d.server.close(r); });
  return d;
}

const quiet = { warn() {} };
const worker = (d, handler, opts = {}) =>
  new Worker({ api: d.url, user: "ann", queues: ["q"], handler, waitMs: 20, graceMs: 5000, log: quiet, ...opts });

test("completes with the handler's output and reports progress", async () => {
  const d = await fakeDaemon();
  d.add(1);
  const w = worker(d, async (task) => {
    task.progress(0.5, "half");
    await sleep(100);
    return { double: task.input.i * 2 };
  });
  const done = w.start();
  await waitFor(() => d.reports("complete").length === 1);
  w.stop();
  await done;
  assert.deepEqual(d.reports("complete")[0].output, { double: 0 });
  assert.ok(d.reports("heartbeat").some((b) => b.progress === 0.5 && b.message === "half"));
  assert.ok(d.users.every((u) => u === "ann"));
  await d.close();
});

test("a failing handler fails the attempt, retryable or not", async () => {
  const d = await fakeDaemon();
  d.add(2);
  const w = worker(d, async (task) => {
    if (task.input.i === 0) throw new Error("boom");
    throw new TaskFailed("bad input", { retryable: false });
  }, { concurrency: 2 });
  const done = w.start();
  await waitFor(() => d.reports("fail").length === 2);
  w.stop();
  await done;
  const fails = d.reports("fail").sort((a, b) => Number(a.retryable) - Number(b.retryable));
  assert.deepEqual([fails[0].error, fails[0].retryable], ["bad input", false]);
  assert.match(fails[1].error, /boom/);
  assert.equal(fails[1].retryable, true);
  await d.close();
});

test("runs up to `concurrency` handlers at once", async () => {
  const d = await fakeDaemon();
  d.add(6);
  let now = 0;
  let most = 0;
  const w = worker(d, async () => {
    now += 1;
    most = Math.max(most, now);
    await sleep(150);
    now -= 1;
    return null;
  }, { concurrency: 3 });
  const done = w.start();
  await waitFor(() => d.reports("complete").length === 6);
  w.stop();
  await done;
  assert.equal(most, 3);
  assert.ok(d.reports("claim").every((b) => b.max <= 3));
  await d.close();
});

test("a refused heartbeat cancels the task and drops its result", async () => {
  const d = await fakeDaemon();
  d.refuseHeartbeats = true;
  d.add(1);
  let aborted = false;
  const w = worker(d, async (task) => {
    task.progress(0.1);
    await waitFor(() => task.cancelled);
    aborted = task.signal.aborted;
    return "late";
  });
  const done = w.start();
  await waitFor(() => aborted);
  w.stop();
  await done;
  assert.equal(d.reports("complete").length, 0);
  await d.close();
});

test("stop lets a running handler finish", async () => {
  const d = await fakeDaemon();
  d.add(1);
  let started = false;
  const w = worker(d, async () => {
    started = true;
    await sleep(400);
    return "done";
  });
  const done = w.start();
  await waitFor(() => started);
  w.stop();
  await done;
  assert.deepEqual(d.reports("complete").map((b) => b.output), ["done"]);
  await d.close();
});

test("the client retries 5xx and network errors, and raises a 4xx", async () => {
  const d = await fakeDaemon();
  d.failNext = 2;
  const c = new Client(d.url, { user: "ann", backoffMinMs: 10 });
  assert.deepEqual(await c.claim(["q"], { waitMs: 0 }), []);
  await assert.rejects(c.complete("t", "wrong", 1), (e) => e instanceof ApiError && e.status === 422);
  await d.close();
  // Nobody listens yet: the client retries until the daemon is up.
  const probe = net.createServer();
  await new Promise((r) => probe.listen(0, "127.0.0.1", r));
  const port = probe.address().port;
  await new Promise((r) => probe.close(r));
  const late = new Client(`http://127.0.0.1:${port}`, { user: "ann", backoffMinMs: 50, retryForMs: 20_000 });
  let d2;
  setTimeout(async () => (d2 = await fakeDaemon(port)), 300);
  assert.deepEqual(await late.claim(["q"], { waitMs: 0 }), []);
  await d2.close();
  assert.throws(() => new Client("ftp://x"), TypeError);
});
