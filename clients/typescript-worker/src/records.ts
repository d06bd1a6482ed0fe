// Task records and their transitions, as docs/protocol-spec.md states them: pure functions, no I/O.
// A record is kept as the JSON object read from the store, so fields this worker does not know
// survive its writes.

import { createHash, randomBytes } from "node:crypto";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface ClaimInfo {
  worker_id: string;
  claim_id: string;
  token_sha256: string;
  epoch: number;
  claimed_at: string;
  deadline: string;
}

export interface JournalEntry {
  revision: number;
  at: string;
  transition: string;
  status: string;
  attempt: number;
  epoch: number;
  worker_id: string | null;
  error: string | null;
  progress: Json;
}

export interface TaskRecord {
  task_id: string;
  queue: string;
  status: "pending" | "claimed" | "succeeded" | "failed" | "dead" | "cancelled";
  spec: Json;
  attempt: number;
  max_attempts: number;
  epoch: number;
  timeout: number | null;
  claim: ClaimInfo | null;
  result: Json;
  error: string | null;
  progress: Json;
  parent: string | null;
  updated_at: string;
  visible_at: string | null;
  transition: string;
  last_worker: string | null;
  journal: JournalEntry[];
  [other: string]: unknown;
}

/** The worker's handle on a claim: the raw token exists only here. */
export interface Claim {
  taskId: string;
  workerId: string;
  claimId: string;
  token: string;
  epoch: number;
  lease: number;
  record: TaskRecord; // as this worker wrote it last
  revision: number; // the KV revision of `record`
}

export const TERMINAL = new Set(["succeeded", "failed", "dead", "cancelled"]);
const KEPT_HEARTBEATS = 16;
const MAX_ENTRIES = 128;
const TEXT = 200;

export const sha256Hex = (token: string): string => createHash("sha256").update(token, "utf8").digest("hex");
export const newToken = (): string => randomBytes(32).toString("base64url");
export const newClaimId = (): string => `c-${randomBytes(8).toString("hex")}`;
const iso = (ms: number): string => new Date(ms).toISOString();
const ms = (when: string | null | undefined): number | null => (when ? Date.parse(when) : null);

/** The `Corral-Index` header of a record: its index fields as a compact JSON array. */
export function indexHeader(r: TaskRecord): string {
  return JSON.stringify([
    r.queue,
    r.status,
    r.epoch,
    r.attempt,
    r.claim?.worker_id ?? null,
    r.claim?.claim_id ?? null,
    ms(r.claim?.deadline),
    ms(r.visible_at),
    ms(r.updated_at),
  ]);
}

function entry(r: TaskRecord): JournalEntry {
  const beat = r.transition === "heartbeat" && r.progress !== null && r.progress !== undefined;
  return {
    revision: 0,
    at: r.updated_at,
    transition: r.transition,
    status: r.status,
    attempt: r.attempt,
    epoch: r.epoch,
    worker_id: r.claim?.worker_id ?? r.last_worker ?? null,
    error: r.error ? r.error.slice(0, TEXT) : null,
    progress: beat && JSON.stringify(r.progress).length <= TEXT ? r.progress : null,
  };
}

/** `after` with its journal entry appended (the newest entry before it gets `revision`). */
function journaled(before: TaskRecord, revision: number, after: TaskRecord): TaskRecord {
  const kept = before.journal?.length ? before.journal.map((e) => ({ ...e })) : [entry(before)];
  if (kept[kept.length - 1].revision === 0) kept[kept.length - 1].revision = revision;
  kept.push(entry(after));
  if (after.transition === "heartbeat") {
    const beats = kept.flatMap((e, i) => (e.transition === "heartbeat" ? [i] : []));
    for (const i of beats.slice(0, Math.max(0, beats.length - KEPT_HEARTBEATS)).reverse()) kept.splice(i, 1);
  }
  if (kept.length > MAX_ENTRIES) kept.splice(1, kept.length - MAX_ENTRIES);
  return { ...after, journal: kept };
}

export class StaleClaim extends Error {}
export class NotClaimable extends Error {}

/** pending → claimed (the next epoch, one more attempt, progress/result/visible_at cleared). */
export function claim(r: TaskRecord, revision: number, workerId: string, claimId: string, tokenSha: string, lease: number, now: number): TaskRecord {
  if (r.status !== "pending") throw new NotClaimable(`task ${r.task_id} is ${r.status}`);
  if (r.visible_at && Date.parse(r.visible_at) - 250 > now) throw new NotClaimable(`task ${r.task_id} is not due`);
  if (r.attempt >= r.max_attempts) throw new NotClaimable(`task ${r.task_id} has spent its attempts`);
  const epoch = r.epoch + 1;
  const info: ClaimInfo = {
    worker_id: workerId,
    claim_id: claimId,
    token_sha256: tokenSha,
    epoch,
    claimed_at: iso(now),
    deadline: iso(now + lease * 1000),
  };
  return journaled(r, revision, {
    ...r,
    status: "claimed",
    attempt: r.attempt + 1,
    epoch,
    claim: info,
    progress: null,
    result: null,
    visible_at: null,
    updated_at: iso(now),
    transition: "claimed",
    last_worker: workerId,
  });
}

function check(r: TaskRecord, c: Claim): void {
  if (r.status !== "claimed" || !r.claim || r.claim.claim_id !== c.claimId || r.claim.token_sha256 !== sha256Hex(c.token)) {
    throw new StaleClaim(`task ${r.task_id}: claim ${c.claimId} is no longer current; the task is ${r.status} (${r.transition})`);
  }
}

/** claimed → claimed: the deadline moves to now + lease. */
export function heartbeat(r: TaskRecord, revision: number, c: Claim, now: number): TaskRecord {
  check(r, c);
  const claimInfo = { ...(r.claim as ClaimInfo), deadline: iso(now + c.lease * 1000) };
  return journaled(r, revision, { ...r, claim: claimInfo, updated_at: iso(now), transition: "heartbeat" });
}

/** claimed → succeeded with `result`; the claim ends. */
export function complete(r: TaskRecord, revision: number, c: Claim, result: Json, now: number): TaskRecord {
  check(r, c);
  return journaled(r, revision, {
    ...r,
    status: "succeeded",
    claim: null,
    result,
    error: null,
    visible_at: null,
    updated_at: iso(now),
    transition: "completed",
  });
}

/** claimed → failed (no retry): how a handler error ends here; retries are the parent's choice. */
export function fail(r: TaskRecord, revision: number, c: Claim, error: string, result: Json, now: number): TaskRecord {
  check(r, c);
  return journaled(r, revision, {
    ...r,
    status: "failed",
    claim: null,
    result,
    error: error.slice(0, 16384),
    visible_at: null,
    updated_at: iso(now),
    transition: "failed",
  });
}

/** claimed → pending, giving the attempt back (a voluntary hand-back on shutdown). */
export function release(r: TaskRecord, revision: number, c: Claim, now: number): TaskRecord {
  check(r, c);
  return journaled(r, revision, {
    ...r,
    status: "pending",
    claim: null,
    attempt: Math.max(0, r.attempt - 1),
    visible_at: null,
    updated_at: iso(now),
    transition: "released",
  });
}
