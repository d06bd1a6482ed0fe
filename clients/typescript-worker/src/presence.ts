// Presence: the worker's key in `{ns}_presence`, written with a Nats-TTL and renewed by compare-and-set.
// Losing it (a renewal refused, or none reaching the server within the TTL) is final for this process.

import { hostname } from "node:os";
import { performance } from "node:perf_hooks";
import { randomBytes } from "node:crypto";
import { headers } from "@nats-io/transport-node";
import { JetStreamApiError, type JetStreamClient } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { Config } from "./config.js";

export class Presence {
  private revision = 0;
  private lastOk = performance.now(); // monotonic: a paused process notices the lost TTL on resume
  private renewing = false;
  private timer: NodeJS.Timeout | undefined;
  private inflight = 0;
  lost = false;
  private readonly info: Record<string, unknown>;

  constructor(
    private readonly js: JetStreamClient,
    private readonly cfg: Config,
    private readonly onLost: (why: string) => void,
  ) {
    this.info = {
      id: cfg.workerId,
      role: "worker",
      host: hostname(),
      pid: process.pid,
      started_at: new Date().toISOString(),
      parent: null,
      tags: [],
      queues: [cfg.queue],
      capacity: cfg.concurrency,
      inflight: 0,
      version: "ts-0.1.0",
      instance: randomBytes(8).toString("hex"),
    };
  }

  private get subject(): string {
    return `$KV.${this.cfg.namespace}_presence.${this.cfg.workerId}`;
  }

  private async put(last: number): Promise<number> {
    const h = headers();
    h.set("Nats-TTL", `${Math.ceil(this.cfg.presenceTtl)}s`);
    const body = JSON.stringify({ ...this.info, inflight: this.inflight });
    const ack = await this.js.publish(this.subject, body, { headers: h, expect: { lastSubjectSequence: last } });
    return ack.seq;
  }

  /** Create the key; a live value of another process is waited for until it expires. */
  async join(): Promise<void> {
    const kv = await new Kvm(this.js).open(`${this.cfg.namespace}_presence`);
    for (;;) {
      const entry = await kv.get(this.cfg.workerId);
      const live = entry !== null && entry.operation === "PUT" && entry.length > 0;
      if (!live) {
        try {
          this.revision = await this.put(entry?.revision ?? 0);
          break;
        } catch (err) {
          if (!(err instanceof JetStreamApiError)) throw err;
        }
      }
      await new Promise((r) => setTimeout(r, 500)); // someone holds the id: wait for its TTL
    }
    this.lastOk = performance.now();
    this.timer = setInterval(() => void this.renew(), this.cfg.presenceInterval * 1000);
  }

  setInflight(n: number): void {
    this.inflight = n;
  }

  private async renew(): Promise<void> {
    if (this.lost || this.renewing) return; // one renewal at a time: two would race on one revision
    if (performance.now() - this.lastOk > this.cfg.presenceTtl * 1000) {
      return this.lose("no renewal reached the server within the TTL");
    }
    this.renewing = true;
    const started = performance.now();
    try {
      this.revision = await this.put(this.revision);
      this.lastOk = started;
    } catch (err) {
      if (err instanceof JetStreamApiError) this.lose(`renewal refused: ${err.message}`);
      // otherwise the server is unreachable: a pause, until the TTL says otherwise
    } finally {
      this.renewing = false;
    }
  }

  private lose(why: string): void {
    if (this.lost) return;
    this.lost = true;
    clearInterval(this.timer);
    this.onLost(why);
  }

  /** Delete the key (a clean leave), if it is still ours. */
  async leave(): Promise<void> {
    clearInterval(this.timer);
    if (this.lost) return;
    this.lost = true;
    const h = headers();
    h.set("KV-Operation", "DEL");
    try {
      await this.js.publish(this.subject, "", { headers: h, expect: { lastSubjectSequence: this.revision } });
    } catch {
      // expires on its own
    }
  }
}
