#!/usr/bin/env node
// A flowcast worker in ten lines: greets whoever a task names.
//
//   FLOWCAST_API=http://127.0.0.1:8081 FLOWCAST_USER=alice node clients/js/examples/worker.mjs
//
// Register a workflow with a task node on queue "greet" (see README.md),
// start a run, and this worker completes its task. Ctrl-C stops it once
// running tasks are done.
import { Worker } from "../src/index.js";

const step = Number(process.env.STEP_SECONDS ?? "0.05") * 1000;
const worker = new Worker({
  api: process.env.FLOWCAST_API ?? "http://127.0.0.1:8081",
  user: process.env.FLOWCAST_USER ?? "alice",
  queues: [process.env.FLOWCAST_QUEUE ?? "greet"],
  concurrency: Number(process.env.CONCURRENCY ?? "4"),
  handler: async (task) => {
    for (let i = 1; i <= 3; i++) {
      await new Promise((r) => setTimeout(r, step));
      task.progress(i / 3, `step ${i} of 3`);
    }
    return { greeting: `hello ${task.input?.name ?? "world"}`, by: "node", attempt: task.attempt };
  },
});
await worker.run();
