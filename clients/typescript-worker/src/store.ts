// The tasks bucket as this worker uses it: read a record, write the next one with one
// compare-and-set on the revision it replaces, with the Corral-Index (and, when finished, Nats-TTL) headers.

import { headers, type NatsConnection } from "@nats-io/transport-node";
import { JetStreamApiError, type JetStreamClient } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { indexHeader, StaleClaim, TERMINAL, type Claim, type Json, type TaskRecord } from "./records.js";

const WRONG_LAST_SEQUENCE = new Set([10071, 10164]);
const CAS_ATTEMPTS = 10;

export class Conflict extends Error {}

export class TaskStore {
  private constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly kv: KV,
    private readonly limits: KV,
    private readonly ns: string,
    private readonly retention: number,
  ) {}

  static async open(nc: NatsConnection, js: JetStreamClient, ns: string, retention: number): Promise<TaskStore> {
    const kvm = new Kvm(js);
    return new TaskStore(nc, js, await kvm.open(`${ns}_tasks`), await kvm.open(`${ns}_limits`), ns, retention);
  }

  /** The stored record and its revision; null when the key holds no task (absent, deleted, expired). */
  async read(taskId: string): Promise<{ record: TaskRecord; revision: number } | null> {
    const entry = await this.kv.get(taskId);
    if (!entry || entry.operation !== "PUT" || entry.length === 0) return null;
    const record = entry.json<TaskRecord>();
    if (typeof record !== "object" || record === null || record.task_id !== taskId) return null;
    return { record, revision: entry.revision };
  }

  /** True when `queue` has fleet-wide limits (a `limit.{queue}` value): this worker does not implement them. */
  async limited(queue: string): Promise<boolean> {
    const entry = await this.limits.get(`limit.${queue}`);
    return entry !== null && entry.operation === "PUT" && entry.length > 0;
  }

  /** Write `next` only if the key is still at `last`; the new revision, or Conflict on a lost race. */
  async write(next: TaskRecord, last: number): Promise<number> {
    const h = headers();
    h.set("Corral-Index", indexHeader(next));
    if (TERMINAL.has(next.status)) h.set("Nats-TTL", `${Math.floor(this.retention)}s`);
    try {
      const ack = await this.js.publish(`$KV.${this.ns}_tasks.${next.task_id}`, JSON.stringify(next), {
        headers: h,
        expect: { lastSubjectSequence: last },
      });
      if (next.status === "pending" || !TERMINAL.has(next.status) || !next.parent) return ack.seq;
      const push = { task_id: next.task_id, status: next.status, revision: ack.seq };
      this.nc.publish(`${this.ns}.results.${next.parent}`, JSON.stringify(push));
      return ack.seq;
    } catch (err) {
      if (err instanceof JetStreamApiError && WRONG_LAST_SEQUENCE.has(err.code)) throw new Conflict(err.message);
      throw err;
    }
  }

  /**
   * Apply `step` to the record the claim wrote last and write it; on a lost race re-read and apply
   * it again to the fresh record (it throws StaleClaim when the claim is no longer current).
   */
  async settle(c: Claim, step: (r: TaskRecord, revision: number) => TaskRecord): Promise<void> {
    let record = c.record;
    let revision = c.revision;
    for (let attempt = 1; ; attempt++) {
      const next = step(record, revision);
      try {
        c.revision = await this.write(next, revision);
        c.record = next;
        return;
      } catch (err) {
        if (!(err instanceof Conflict) || attempt >= CAS_ATTEMPTS) throw err;
        const fresh = await this.read(c.taskId);
        if (!fresh) throw new StaleClaim(`task ${c.taskId} is gone`);
        ({ record, revision } = fresh);
      }
    }
  }

  /** Record a dead letter on `{ns}.deadletter.{source}` (never throws). */
  async deadLetter(source: string, reason: string, taskId: string | null, subject: string | null, body: string): Promise<void> {
    const letter = { source, reason, subject, headers: {}, body: body.slice(0, 4096), task_id: taskId, at: new Date().toISOString() };
    try {
      await this.js.publish(`${this.ns}.deadletter.${source}`, JSON.stringify(letter));
    } catch (err) {
      console.error(`could not record a dead letter from ${source}: ${String(err)}`);
    }
  }
}

export type { Json };
