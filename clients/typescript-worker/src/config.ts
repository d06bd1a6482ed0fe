// The worker's settings, from the environment the operator (or `corral conformance`) gives it.

export interface Config {
  url: string;
  namespace: string;
  queue: string;
  workerId: string;
  concurrency: number;
  presenceTtl: number; // seconds
  presenceInterval: number; // seconds
  defaultLease: number; // seconds, for a task whose `timeout` is null (the fleet's Settings.lease)
  retention: number; // seconds, the Nats-TTL of a finished record (the fleet's Settings.task_retention)
  lostGrace: number; // seconds a running handler may still finish after presence was lost
}

const TOKEN = /^[A-Za-z0-9_-]{1,128}$/;

function token(name: string, fallback?: string): string {
  const value = process.env[name] ?? fallback;
  if (value === undefined || !TOKEN.test(value)) {
    throw new Error(`${name}: must be a token ^[A-Za-z0-9_-]{1,128}$ (got ${JSON.stringify(value)})`);
  }
  return value;
}

function seconds(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  const value = raw === undefined || raw === "" ? fallback : Number(raw);
  if (!Number.isFinite(value) || value < min || value > max) {
    throw new Error(`${name}: must be a number in [${min}, ${max}] (got ${JSON.stringify(raw)})`);
  }
  return value;
}

export function loadConfig(): Config {
  const ttl = seconds("CORRAL_PRESENCE_TTL", 10, 1, 3600);
  return {
    url: process.env.CORRAL_URL ?? "nats://127.0.0.1:4222",
    namespace: token("CORRAL_NAMESPACE", "corral"),
    queue: token("CORRAL_QUEUE"),
    workerId: token("CORRAL_WORKER_ID", `ts-${process.pid}`),
    concurrency: Math.floor(seconds("CORRAL_CONCURRENCY", 1, 1, 1024)),
    presenceTtl: ttl,
    presenceInterval: seconds("CORRAL_PRESENCE_INTERVAL", Math.min(1, ttl / 3), 0.05, ttl / 2),
    defaultLease: seconds("CORRAL_LEASE", 30, 0.1, 86400),
    retention: seconds("CORRAL_TASK_RETENTION", 7 * 86400, 1, 10 * 365 * 86400),
    lostGrace: seconds("CORRAL_LOST_GRACE", ttl, 0, 3600),
  };
}
