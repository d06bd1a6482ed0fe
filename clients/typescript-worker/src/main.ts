#!/usr/bin/env node
// A corral worker: presence, the queue's dispatch consumer, claims by compare-and-set, lease
// extension, results fenced by the claim, late results dead-lettered. docs/protocol-spec.md is the
// specification it follows; `corral conformance -- node dist/main.js` checks it.

import { setTimeout as sleep } from "node:timers/promises";
import { connect, nanos, type NatsConnection } from "@nats-io/transport-node";
import {
  AckPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  type Consumer,
  type JetStreamClient,
  type JsMsg,
} from "@nats-io/jetstream";
import { loadConfig, type Config } from "./config.js";
import { Presence } from "./presence.js";
import * as rec from "./records.js";
import { Conflict, TaskStore } from "./store.js";

const TOKEN = /^[A-Za-z0-9_-]{1,128}$/;
const NOTIFICATION_KEYS = new Set(["task_id", "revision", "epoch", "visible_at", "record"]);
const EXIT_PRESENCE_LOST = 4;

interface Running {
  claim: rec.Claim;
  abort: AbortController;
  why: "taken" | "lost" | "shutdown" | null;
  lock: Promise<unknown>;
  done: Promise<void>;
}

/** The handler: the kit's contract (payload {sleep, echo}); a real worker puts its work here. */
async function handle(spec: rec.Json, signal: AbortSignal): Promise<rec.Json> {
  const payload = spec !== null && typeof spec === "object" && !Array.isArray(spec) ? spec.payload : null;
  const args = payload !== null && typeof payload === "object" && !Array.isArray(payload) ? payload : {};
  const seconds = typeof args.sleep === "number" && args.sleep > 0 ? args.sleep : 0;
  if (seconds > 0) await sleep(seconds * 1000, undefined, { signal });
  return { v: 1, kind: "success", summary: "", output: args.echo ?? null };
}

/** Why a notification is malformed, or null when it has the notification's shape. */
function malformed(note: unknown): string | null {
  if (note === null || typeof note !== "object" || Array.isArray(note)) return "not a JSON object";
  const n = note as Record<string, unknown>;
  const extra = Object.keys(n).filter((k) => !NOTIFICATION_KEYS.has(k));
  if (extra.length) return `unknown field ${extra[0]}`;
  if (typeof n.task_id !== "string" || !TOKEN.test(n.task_id)) return "task_id: not a token";
  if (!Number.isInteger(n.revision) || !Number.isInteger(n.epoch)) return "revision and epoch: integers required";
  return null;
}

class Worker {
  private readonly running = new Map<string, Running>();
  private stopping = false;
  private warnedLimited = false;
  private exitCode = 0;
  private slotFreed: () => void = () => {};

  constructor(
    private readonly cfg: Config,
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly store: TaskStore,
    private readonly presence: Presence,
  ) {}

  private log(text: string): void {
    console.error(`${new Date().toISOString()} worker ${this.cfg.workerId}: ${text}`);
  }

  /** Bind the queue's shared consumer; create it with corral's config only when it is missing. */
  async consumer(): Promise<Consumer> {
    const stream = `${this.cfg.namespace}_dispatch`;
    const name = `q-${this.cfg.queue}`;
    try {
      return await this.js.consumers.get(stream, name);
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.ConsumerNotFound)) throw err;
    }
    const jsm = await jetstreamManager(this.nc);
    await jsm.consumers.add(stream, {
      durable_name: name,
      filter_subject: `${this.cfg.namespace}.dispatch.${this.cfg.queue}.*`,
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanos(5000),
      max_deliver: 20,
      max_ack_pending: -1,
      max_waiting: 4096,
    });
    return this.js.consumers.get(stream, name);
  }

  async run(): Promise<number> {
    const consumer = await this.consumer();
    this.nc.subscribe(`${this.cfg.namespace}.control.${this.cfg.workerId}`, {
      callback: (_err, msg) => void this.onControl(msg.string()),
    });
    while (!this.stopping) {
      const free = this.cfg.concurrency - this.running.size;
      if (free <= 0) {
        await new Promise<void>((resolve) => (this.slotFreed = resolve));
        continue;
      }
      try {
        const batch = await consumer.fetch({ max_messages: free, expires: 1000 });
        for await (const m of batch) {
          if (this.stopping) {
            m.nak();
            continue;
          }
          await this.onNotification(m);
        }
      } catch (err) {
        if (!this.stopping) this.log(`fetch failed: ${String(err)}`);
        await sleep(200);
      }
    }
    await Promise.all([...this.running.values()].map((r) => r.done));
    return this.exitCode;
  }

  private async onNotification(m: JsMsg): Promise<void> {
    let note: { task_id: string; revision: number } | null = null;
    let problem: string | null;
    try {
      const parsed: unknown = JSON.parse(m.string());
      problem = malformed(parsed);
      if (!problem) note = parsed as { task_id: string; revision: number };
    } catch (err) {
      problem = `not JSON: ${String(err)}`;
    }
    if (!note) {
      await this.store.deadLetter("dispatch", `malformed notification: ${problem}`, null, m.subject, m.string());
      m.term();
      return;
    }
    try {
      for (let attempt = 0; attempt < 10; attempt++) {
        const got = await this.store.read(note.task_id);
        if (!got || got.record.status !== "pending" || got.record.queue !== this.cfg.queue) break; // stale or forged
        if (await this.store.limited(this.cfg.queue)) {
          // Limits are not implemented here: a limited queue is left to workers that keep them.
          if (!this.warnedLimited) this.log(`queue ${this.cfg.queue} has limits, which this worker does not implement; leaving its tasks`);
          this.warnedLimited = true;
          m.nak(5000);
          return;
        }
        const wait = got.record.visible_at ? Date.parse(got.record.visible_at) - Date.now() : 0;
        if (wait > 250) {
          m.nak(Math.min(wait, 3_600_000));
          return;
        }
        const token = rec.newToken();
        const lease = got.record.timeout ?? this.cfg.defaultLease;
        const claimId = rec.newClaimId();
        const now = Date.now();
        let next: rec.TaskRecord;
        try {
          next = rec.claim(got.record, got.revision, this.cfg.workerId, claimId, rec.sha256Hex(token), lease, now);
        } catch (err) {
          if (err instanceof rec.NotClaimable) break;
          throw err;
        }
        try {
          const revision = await this.store.write(next, got.revision);
          m.ack();
          this.start({ taskId: next.task_id, workerId: this.cfg.workerId, claimId, token, epoch: next.epoch, lease, record: next, revision });
          return;
        } catch (err) {
          if (!(err instanceof Conflict)) throw err; // lost the race: read again
        }
      }
      m.ack();
    } catch (err) {
      this.log(`notification for ${note.task_id}: ${String(err)}; redelivered later`);
      m.nak(1000);
    }
  }

  private start(claim: rec.Claim): void {
    const run: Running = { claim, abort: new AbortController(), why: null, lock: Promise.resolve(), done: Promise.resolve() };
    this.running.set(claim.taskId, run);
    this.presence.setInflight(this.running.size);
    run.done = this.execute(run).finally(() => {
      this.running.delete(claim.taskId);
      this.presence.setInflight(this.running.size);
      this.slotFreed();
    });
  }

  /** Run `step` on the claim's record under the claim's lock (a heartbeat and the outcome never race). */
  private locked(run: Running, step: (r: rec.TaskRecord, revision: number) => rec.TaskRecord): Promise<void> {
    const next = run.lock.then(() => this.store.settle(run.claim, step));
    run.lock = next.catch(() => undefined);
    return next;
  }

  private async execute(run: Running): Promise<void> {
    const { claim } = run;
    const beat = setInterval(() => {
      if (run.why !== null || this.presence.lost) return; // lost or taken: the lease is no longer ours to extend
      this.locked(run, (r, revision) => rec.heartbeat(r, revision, claim, Date.now())).catch((err) => {
        if (err instanceof rec.StaleClaim) this.stop(run, "taken");
        else this.log(`lease extension of ${claim.taskId} failed: ${String(err)}`);
      });
    }, (claim.lease * 1000) / 3);
    let result: rec.Json;
    let error: string | null = null;
    try {
      result = await handle(claim.record.spec, run.abort.signal);
    } catch (err) {
      if (run.abort.signal.aborted) {
        clearInterval(beat);
        if (run.why === "shutdown") await this.locked(run, (r, revision) => rec.release(r, revision, claim, Date.now())).catch(() => undefined);
        return; // taken: not ours; lost: left to the reclaimer
      }
      error = String(err);
      result = { v: 1, kind: "fail", summary: error, error: { message: error, substrate_fault: false } };
    } finally {
      clearInterval(beat);
    }
    if (run.why === "taken") return;
    try {
      await this.locked(run, (r, revision) =>
        error === null ? rec.complete(r, revision, claim, result, Date.now()) : rec.fail(r, revision, claim, error, result, Date.now()),
      );
    } catch (err) {
      if (!(err instanceof rec.StaleClaim)) {
        this.log(`could not record the outcome of ${claim.taskId}: ${String(err)}; it is re-run after its lease`);
        return;
      }
      this.log(`late result for ${claim.taskId} rejected: ${err.message}`);
      const reason = `result from ${claim.workerId} (epoch ${claim.epoch}) refused: ${err.message}`;
      await this.store.deadLetter("late-result", reason, claim.taskId, null, JSON.stringify(result));
    }
  }

  private stop(run: Running, why: "taken" | "lost" | "shutdown"): void {
    if (run.why === null || why === "taken") run.why = why;
    run.abort.abort();
  }

  /** A hint that a claim of ours ended elsewhere: checked against the stored record before acting. */
  private async onControl(body: string): Promise<void> {
    let taskId: unknown;
    try {
      taskId = (JSON.parse(body) as { task_id?: unknown }).task_id;
    } catch {
      return;
    }
    const run = typeof taskId === "string" ? this.running.get(taskId) : undefined;
    if (!run) return;
    const got = await this.store.read(run.claim.taskId).catch(() => undefined);
    if (got === undefined) return;
    if (!got || got.record.status !== "claimed" || got.record.claim?.claim_id !== run.claim.claimId) {
      this.log(`${run.claim.taskId} was ${got?.record.status ?? "removed"} elsewhere; stopping its handler`);
      this.stop(run, "taken");
    }
  }

  /** Presence lost: take nothing new, extend nothing, let handlers finish within the grace, then exit. */
  presenceLost(why: string): void {
    this.log(`presence lost (${why}); failing closed`);
    this.stopping = true;
    this.exitCode = EXIT_PRESENCE_LOST;
    this.slotFreed();
    for (const run of this.running.values()) if (run.why === null) run.why = "lost";
    setTimeout(() => {
      for (const run of this.running.values()) run.abort.abort();
    }, this.cfg.lostGrace * 1000).unref();
  }

  /** SIGTERM: take nothing new, stop what runs and hand it back (release). */
  shutdown(): void {
    this.stopping = true;
    this.slotFreed();
    for (const run of this.running.values()) this.stop(run, "shutdown");
  }
}

async function main(): Promise<number> {
  const cfg = loadConfig();
  const nc = await connect({ servers: cfg.url.split(","), name: `corral-ts-worker ${cfg.workerId}`, maxReconnectAttempts: -1 });
  const js = jetstream(nc);
  const store = await TaskStore.open(nc, js, cfg.namespace, cfg.retention);
  let worker: Worker | null = null;
  const presence = new Presence(js, cfg, (why) => worker?.presenceLost(why));
  await presence.join();
  worker = new Worker(cfg, nc, js, store, presence);
  const w = worker;
  process.on("SIGTERM", () => w.shutdown());
  process.on("SIGINT", () => w.shutdown());
  console.error(`worker ${cfg.workerId} serving ${cfg.queue} (concurrency ${cfg.concurrency}) on ${cfg.url}, namespace ${cfg.namespace}`);
  const code = await w.run();
  await presence.leave();
  await nc.drain();
  return code;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`corral-ts-worker: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
