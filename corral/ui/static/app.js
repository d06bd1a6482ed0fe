// corral dashboard: plain JavaScript, no build step. State arrives by server-sent events
// (/api/stream: a snapshot, then deltas); task listings and details are fetched page by page.
"use strict";

const S = {
  config: { allow_actions: false, trace_url: null, namespace: "" },
  agents: new Map(),
  departures: [],
  queues: [],
  schedules: [],
  counts: {},
  timeline: [],
  lastSeq: 0,
  versions: {},
  seen: {},            // section versions last fetched, per view
  deadLetters: 0,
  tab: "overview",
  page: { offset: 0, limit: 50, total: 0 },
  selected: null,
};
const TIMELINE_MAX = 500;
const LABELS = { late_result: "rejected", dead_letter: "dead letter" };

// ---- helpers -------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (sel) => document.querySelector(sel);
function fill(tbody, rows, cols, empty) {
  tbody.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { class: "empty", colspan: cols }, empty))]));
}
function ago(ts) {
  if (ts === null || ts === undefined) return "";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 1) return "now";
  if (s < 120) return `${Math.round(s)}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  return `${(s / 3600).toFixed(1)}h ago`;
}
function dur(s) {
  if (s === null || s === undefined) return "–";
  if (s < 120) return `${Math.round(s)}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  return `${(s / 3600).toFixed(1)}h`;
}
function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}
function status(s) { return h("span", { class: `s-${s}` }, s); }
// A task's status as a list shows it: a pending task not startable yet says until when; a priority other than normal is named.
function taskStatus(r) {
  const parts = [status(r.status)];
  if (r.status === "pending" && r.visible_at && r.visible_at * 1000 > Date.now())
    parts.push(h("span", { class: "delayed" }, ` delayed until ${clock(r.visible_at)}`));
  if (r.priority && r.priority !== "normal") parts.push(" ", h("span", { class: `prio prio-${r.priority}` }, r.priority));
  return parts;
}
function limitsText(l) {
  if (!l) return "–";
  const parts = [];
  if (l.concurrency) parts.push(`running ${l.held}/${l.concurrency}`);
  if (l.rate) parts.push(`rate ${l.rate}`);
  return parts.join(" · ") || "–";
}
function taskLink(id) {
  return id ? h("a", { href: `#tasks/${encodeURIComponent(id)}`, class: "mono", dataset: { task: id } }, id) : "";
}
function toast(text, kind) {
  const t = $("#toast");
  t.textContent = text;
  t.className = kind;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}
async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// ---- actions -------------------------------------------------------------------------------
// The server puts this process's action token in the page; a page of another origin cannot read it.
function actionToken() {
  const meta = document.querySelector('meta[name="corral-token"]');
  return meta ? meta.content : "";
}
async function act(taskId, action) {
  const r = await fetch(`/api/tasks/${encodeURIComponent(taskId)}/${action}`, {
    method: "POST", headers: { "X-Corral-Action": actionToken(), Accept: "application/json" },
  });
  const body = await r.json().catch(() => ({}));
  if (r.ok) toast(`${action}: ${taskId} is ${body.record.status} (revision ${body.record.revision})`, "ok");
  else toast(`${action} refused (${r.status}): ${body.error || r.statusText}`, "error");
  S.seen = {};
  refreshView(true);
}
function actionButtons(row) {
  if (!S.config.allow_actions) return [];
  const out = [];
  if (row.status === "dead" || row.status === "failed")
    out.push(h("button", { type: "button", class: "primary action-retry", dataset: { task: row.task_id },
      onclick: (e) => { e.stopPropagation(); act(row.task_id, "retry"); } }, "Retry"));
  if (row.status === "pending" || row.status === "claimed")
    out.push(h("button", { type: "button", class: "danger action-cancel", dataset: { task: row.task_id },
      onclick: (e) => { e.stopPropagation(); act(row.task_id, "cancel"); } }, "Cancel"));
  return out;
}

// ---- overview ------------------------------------------------------------------------------
function renderCards() {
  const c = S.counts;
  const cards = [
    ["agents", S.agents.size], ["pending", c.pending || 0], ["claimed", c.claimed || 0],
    ["succeeded", c.succeeded || 0], ["failed", c.failed || 0], ["dead", c.dead || 0], ["dead letters", S.deadLetters],
  ];
  $("#cards").replaceChildren(...cards.map(([l, n]) =>
    h("div", { class: "card", dataset: { card: l } }, h("div", { class: `n s-${l}` }, n), h("div", { class: "l" }, l))));
  $("#dead-count").textContent = (c.dead || 0) + (c.failed || 0) || "";
}
function renderAgents() {
  const rows = [...S.agents.values()].sort((a, b) => a.id.localeCompare(b.id)).map((a) => {
    const held = Math.max(a.inflight, a.claims);
    const pct = a.capacity ? Math.min(100, (100 * held) / a.capacity) : 0;
    return h("tr", { dataset: { agent: a.id } },
      h("td", { class: "id" }, a.id), h("td", {}, a.role), h("td", {}, `${a.host} · ${a.pid}`),
      h("td", {}, a.queues.join(", ") || "–"),
      h("td", {}, h("span", { class: "bar" }, h("i", { style: `width:${pct}%` })), `${held}/${a.capacity}`),
      h("td", {}, ago(a.since)),
      h("td", {}, dur(Date.now() / 1000 - a.started_at)));
  });
  fill($("#agents-table tbody"), rows, 7, "no agent present");
  $("#agent-count").textContent = `${S.agents.size} present`;
  const deps = S.departures.slice(-8).reverse().map((d) =>
    h("li", { dataset: { departed: d.id, reason: d.reason } },
      h("span", { class: "mono" }, d.id), ` ${d.role ? "(" + d.role + ") " : ""}`,
      h("span", { class: d.reason === "expired" ? "s-failed" : "" }, d.reason), ` ${ago(d.at)}`));
  $("#departures").replaceChildren(...(deps.length ? deps : [h("li", {}, "none")]));
}
function renderQueues() {
  const rows = S.queues.map((q) => h("tr", { dataset: { queue: q.name } },
    h("td", { class: "id" }, q.name), h("td", {}, q.depth), h("td", {}, q.delayed), h("td", {}, q.in_flight),
    h("td", { class: "limits" }, limitsText(q.limits)),
    h("td", {}, q.finished_per_s.toFixed(2)), h("td", {}, q.submitted_per_s.toFixed(2)),
    h("td", {}, q.oldest_pending_age === null ? "–" : dur(q.oldest_pending_age)),
    h("td", { class: "s-succeeded" }, q.counts.succeeded), h("td", { class: "s-failed" }, q.counts.failed),
    h("td", { class: "s-dead" }, q.counts.dead), h("td", {}, q.workers.join(", ") || "–")));
  fill($("#queues-table tbody"), rows, 12, "no task yet");
  const srows = S.schedules.map((s) => h("tr", { dataset: { schedule: s.name } },
    h("td", { class: "id" }, s.name), h("td", { class: "mono" }, `${s.cron} (${s.timezone})`), h("td", {}, s.queue),
    h("td", {}, s.paused ? "paused" : s.next_tick ? clock(s.next_tick) : "–"),
    h("td", {}, s.last_tick ? `${clock(s.last_tick)} ` : "–", s.last_task ? taskLink(s.last_task) : "")));
  fill($("#schedules-table tbody"), srows, 5, "no schedule");
  const sel = $("#task-filters select[name=queue]");
  const want = sel.value;
  const names = S.queues.map((q) => q.name);
  if ([...sel.options].slice(1).map((o) => o.value).join() !== names.join()) {
    sel.replaceChildren(h("option", { value: "" }, "any"), ...names.map((n) => h("option", { value: n }, n)));
    sel.value = want;
  }
}
function timelineItem(item, fresh) {
  return h("li", { class: `k-${item.kind}${fresh ? " fresh" : ""}`, dataset: { kind: item.kind, seq: item.seq, task: item.task_id || "", agent: item.agent_id || "" } },
    h("span", { class: "t" }, clock(item.at)), h("b", {}, LABELS[item.kind] || item.kind), " ",
    h("span", { class: "x" }, item.text));
}
function renderTimeline(fresh) {
  const list = $("#timeline");
  if (!fresh) {
    list.replaceChildren(...S.timeline.slice().reverse().map((i) => timelineItem(i, false)));
  } else {
    for (const item of fresh) list.prepend(timelineItem(item, true));
    while (list.children.length > TIMELINE_MAX) list.lastChild.remove();
  }
  if (!list.children.length) list.append(h("li", { class: "muted" }, "nothing has happened yet"));
  else if (list.lastChild.classList.contains("muted")) list.lastChild.remove();
}

// ---- tasks ---------------------------------------------------------------------------------
function filters() {
  const f = new FormData($("#task-filters"));
  const p = new URLSearchParams();
  for (const [k, v] of f.entries()) if (v) p.set(k, v);
  return p;
}
async function loadTasks() {
  const p = filters();
  p.set("offset", S.page.offset);
  p.set("limit", S.page.limit);
  const page = await getJSON(`/api/tasks?${p}`);
  S.page.total = page.total;
  const rows = page.rows.map((r) => h("tr", {
    class: `clickable${S.selected === r.task_id ? " selected" : ""}`, dataset: { task: r.task_id, status: r.status },
    onclick: () => { location.hash = `#tasks/${encodeURIComponent(r.task_id)}`; },
  },
  h("td", { class: "id" }, r.task_id), h("td", {}, r.title), h("td", {}, r.queue), h("td", {}, ...taskStatus(r)),
  h("td", {}, `${r.attempt}/${r.max_attempts}`), h("td", { class: "mono" }, r.worker || ""), h("td", {}, ago(r.updated_at)),
  h("td", {}, r.error || "")));
  fill($("#tasks-table tbody"), rows, 8, "no task matches");
  const end = Math.min(page.total, S.page.offset + page.rows.length);
  $("#page-info").textContent = page.total ? `${S.page.offset + 1}–${end} of ${page.total}` : "0 tasks";
  $("#prev").disabled = S.page.offset === 0;
  $("#next").disabled = end >= page.total;
}
function kv(pairs) {
  return h("dl", {}, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}
async function loadDetail() {
  const box = $("#task-detail");
  if (!S.selected) { box.hidden = true; return; }
  let d;
  try { d = await getJSON(`/api/tasks/${encodeURIComponent(S.selected)}`); }
  catch (err) { box.hidden = false; box.replaceChildren(h("h2", {}, S.selected), h("p", { class: "s-failed" }, err.message)); return; }
  const r = d.record;
  const trace = d.trace_id ? (d.trace_link ? h("a", { href: d.trace_link, target: "_blank", rel: "noopener", class: "trace-link" }, d.trace_id) : h("span", { class: "mono" }, d.trace_id)) : null;
  const attempts = h("table", { class: "grid attempts" },
    h("thead", {}, h("tr", {}, ...["epoch", "worker", "claimed", "ended", "outcome"].map((c) => h("th", {}, c)))),
    h("tbody", {}, ...d.attempts.map((a) => h("tr", {}, h("td", {}, a.epoch), h("td", { class: "mono" }, a.worker || ""),
      h("td", {}, clock(a.claimed_at)), h("td", {}, a.ended_at ? clock(a.ended_at) : "running"),
      h("td", {}, a.outcome ? `${a.outcome}${a.error ? ": " + a.error : ""}` : `${a.heartbeats} heartbeat(s)`)))));
  const journal = h("table", { class: "grid journal" },
    h("thead", {}, h("tr", {}, ...["rev", "at", "transition", "status", "att", "worker"].map((c) => h("th", {}, c)))),
    h("tbody", {}, ...d.journal.map((e) => h("tr", {}, h("td", {}, e.revision), h("td", {}, clock(Date.parse(e.at) / 1000)),
      h("td", {}, e.transition), h("td", {}, status(e.status)), h("td", {}, e.attempt), h("td", { class: "mono" }, e.worker_id || "")))));
  box.hidden = false;
  box.replaceChildren(
    h("h2", {}, r.task_id, " ", status(r.status)),
    h("div", { class: "actions" }, ...actionButtons({ task_id: r.task_id, status: r.status })),
    kv([["queue", r.queue], ["priority", r.priority], ["attempt", `${r.attempt} of ${r.max_attempts}`], ["epoch", r.epoch],
      ["not before", r.status === "pending" && r.visible_at ? new Date(r.visible_at).toLocaleString() : null],
      ["worker", r.claim ? r.claim.worker_id : r.last_worker], ["parent", r.parent], ["trace", trace],
      ["created", new Date(r.created_at).toLocaleString()], ["updated", `${new Date(r.updated_at).toLocaleString()}`],
      ["error", r.error]]),
    h("h3", {}, `attempts (${d.attempts.length})`), attempts,
    h("h3", {}, `journal (${d.journal.length})`), journal,
    h("h3", {}, "spec"), h("pre", {}, JSON.stringify(r.spec, null, 2)),
    ...(r.result !== null ? [h("h3", {}, "result"), h("pre", {}, JSON.stringify(r.result, null, 2))] : []));
}

// ---- dead letters --------------------------------------------------------------------------
async function loadDead() {
  const [dead, failed, letters] = await Promise.all([
    getJSON("/api/tasks?status=dead&limit=200"), getJSON("/api/tasks?status=failed&limit=200"), getJSON("/api/dead-letters"),
  ]);
  const rows = [...dead.rows, ...failed.rows].sort((a, b) => b.updated_at - a.updated_at).map((r) =>
    h("tr", { dataset: { task: r.task_id, status: r.status } },
      h("td", {}, taskLink(r.task_id)), h("td", {}, r.title), h("td", {}, r.queue), h("td", {}, status(r.status)),
      h("td", {}, `${r.attempt}/${r.max_attempts}`), h("td", { class: "mono" }, r.worker || ""), h("td", {}, ago(r.updated_at)),
      h("td", {}, r.error || ""), h("td", {}, ...actionButtons(r))));
  fill($("#dead-table tbody"), rows, 9, "no dead or failed task");
  const lrows = letters.letters.map((l) => h("tr", { dataset: { source: l.source, task: l.task_id || "" } },
    h("td", {}, ago(Date.parse(l.at) / 1000)), h("td", {}, h("code", {}, l.source)), h("td", {}, taskLink(l.task_id)),
    h("td", {}, l.reason), h("td", {}, l.task_status ? status(l.task_status) : ""),
    h("td", {}, ...(l.task_id && l.task_status ? actionButtons({ task_id: l.task_id, status: l.task_status }) : []))));
  fill($("#letters-table tbody"), lrows, 6, "no dead letter");
}

// ---- events and registry -------------------------------------------------------------------
async function loadEvents() {
  const d = await getJSON("/api/events");
  // Each recipient knows its own descendants; a recipient that is someone else's descendant is
  // drawn under it, so delegations down several levels read as one tree.
  const nodes = new Map();
  const children = new Map();
  for (const t of d.trees) {
    for (const n of t.nodes) {
      if (nodes.has(n.agent)) continue;
      nodes.set(n.agent, n);
      const parent = n.parent || t.root;
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(n);
    }
  }
  const roots = d.trees.map((t) => t.root).filter((r) => !nodes.has(r));
  const drawn = new Set();
  const draw = (node) => {
    drawn.add(node.agent);
    const kids = (children.get(node.agent) || []).filter((k) => !drawn.has(k.agent));
    return h("li", { class: `node-${node.status}`, dataset: { agent: node.agent } },
      h("span", { class: "mono" }, node.agent),
      node.last_turn !== null ? h("span", { class: "scope" }, `turn ${node.last_turn}`) : null,
      node.scope.length ? h("span", { class: "scope" }, `[${node.scope.join(", ")}]`) : null,
      node.last_error ? h("span", { class: "err" }, node.last_error) : null,
      node.status === "shut_down" ? h("span", { class: "scope" }, "shut down") : null,
      kids.length ? h("ul", {}, ...kids.map(draw)) : null);
  };
  const trees = roots.map((root) => h("div", { class: "treebox tree", dataset: { root } },
    h("div", { class: "root mono" }, root), h("ul", {}, ...(children.get(root) || []).map(draw))));
  $("#trees").replaceChildren(...(trees.length ? trees : [h("p", { class: "muted" }, "no lifecycle event in the last hour")]));
  $("#events-list").replaceChildren(...d.events.map((e) => h("li", { dataset: { kind: e.kind } },
    h("span", { class: "t" }, clock(e.at)), h("b", {}, e.kind.replaceAll("_", " ")), ` → ${e.to}: `, e.text)));
}
async function loadRegistry() {
  const d = await getJSON("/api/registry");
  const yes = (b) => h("span", { class: b ? "s-succeeded" : "s-failed" }, b ? "yes" : "no");
  fill($("#threads-table tbody"), d.threads.map((t) => h("tr", { dataset: { thread: t.thread } },
    h("td", { class: "id" }, t.thread), h("td", { class: "mono" }, t.session_id), h("td", { class: "mono" }, t.agent_id),
    h("td", {}, yes(t.alive)), h("td", {}, ago(Date.parse(t.reserved_at) / 1000)))), 5, "no thread reserved");
  fill($("#sessions-table tbody"), d.sessions.map((s) => h("tr", { dataset: { session: s.id } },
    h("td", { class: "id" }, s.id), h("td", { class: "mono" }, s.agent_id), h("td", {}, s.status), h("td", {}, yes(s.alive)),
    h("td", {}, s.thread || "–"), h("td", {}, s.parent_session || "–"), h("td", {}, ago(Date.parse(s.started_at) / 1000)))),
  7, "no session");
}

// ---- views and refresh ---------------------------------------------------------------------
const VIEWS = {
  overview: { sections: [], load: null },
  tasks: { sections: ["tasks"], load: async () => { await loadTasks(); await loadDetail(); } },
  dead: { sections: ["tasks", "dead_letters"], load: loadDead },
  events: { sections: ["events"], load: loadEvents },
  registry: { sections: ["registry", "agents"], load: loadRegistry },
};
let loading = false;
let lastLoad = 0;
async function refreshView(force) {
  const view = VIEWS[S.tab];
  if (!view || !view.load || loading) return;
  const key = view.sections.map((s) => S.versions[s] || 0).join(",");
  if (!force && S.seen[S.tab] === key) return;
  if (!force && Date.now() - lastLoad < 1000) { setTimeout(() => refreshView(false), 1000); return; }
  loading = true;
  lastLoad = Date.now();
  S.seen[S.tab] = key;
  try { await view.load(); }
  catch (err) { toast(`could not load ${S.tab}: ${err.message}`, "error"); }
  finally { loading = false; }
}
function route() {
  const [tab, arg] = location.hash.replace(/^#/, "").split("/");
  S.tab = VIEWS[tab] ? tab : "overview";
  if (S.tab === "tasks") S.selected = arg ? decodeURIComponent(arg) : null;
  for (const sec of document.querySelectorAll("section.tab")) sec.hidden = sec.id !== `tab-${S.tab}`;
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.tab === S.tab);
  refreshView(true);
}

let pending = false;
function renderOverview() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; renderCards(); renderAgents(); renderQueues(); });
}

function applySnapshot(snap) {
  S.agents = new Map(snap.agents.map((a) => [a.id, a]));
  S.departures = snap.departures;
  S.queues = snap.queues;
  S.schedules = snap.schedules;
  S.counts = snap.counts;
  S.timeline = snap.timeline.slice(-TIMELINE_MAX);
  S.lastSeq = S.timeline.length ? S.timeline[S.timeline.length - 1].seq : 0;
  S.versions = snap.versions;
  S.deadLetters = snap.dead_letters;
  document.body.dataset.ready = snap.ready.join(",");
  renderTimeline(null);
  renderOverview();
  refreshView(false);
}
function applyDelta(d) {
  if (d.agents) {
    for (const a of d.agents.upsert) S.agents.set(a.id, a);
    for (const id of d.agents.remove) S.agents.delete(id);
    if (d.agents.departures) S.departures = d.agents.departures;
  }
  if (d.queues) S.queues = d.queues;
  if (d.schedules) S.schedules = d.schedules;
  if (d.counts) S.counts = d.counts;
  if (d.dead_letters !== undefined) S.deadLetters = d.dead_letters;
  if (d.timeline) {
    const fresh = d.timeline.filter((i) => i.seq > S.lastSeq);
    if (fresh.length) {
      S.timeline.push(...fresh);
      S.timeline.splice(0, Math.max(0, S.timeline.length - TIMELINE_MAX));
      S.lastSeq = fresh[fresh.length - 1].seq;
      renderTimeline(fresh);
    }
  }
  S.versions = d.versions;
  document.body.dataset.ready = d.ready.join(",");
  renderOverview();
  refreshView(false);
}

function connect() {
  const live = $("#live");
  const es = new EventSource("/api/stream");
  es.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
  es.addEventListener("error", () => { live.textContent = "reconnecting…"; live.className = "live off"; });
  es.addEventListener("snapshot", (e) => applySnapshot(JSON.parse(e.data)));
  es.addEventListener("delta", (e) => applyDelta(JSON.parse(e.data)));
}

async function main() {
  S.config = await getJSON("/api/config");
  $("#namespace").textContent = S.config.namespace;
  document.title = `corral · ${S.config.namespace}`;
  const mode = $("#mode");
  mode.textContent = S.config.allow_actions ? "actions allowed" : "read-only";
  mode.classList.toggle("actions", S.config.allow_actions);
  document.body.dataset.actions = S.config.allow_actions ? "allowed" : "read-only";
  $("#task-filters").addEventListener("input", () => { S.page.offset = 0; refreshView(true); });
  $("#task-filters").addEventListener("submit", (e) => e.preventDefault());
  $("#prev").addEventListener("click", () => { S.page.offset = Math.max(0, S.page.offset - S.page.limit); refreshView(true); });
  $("#next").addEventListener("click", () => { S.page.offset += S.page.limit; refreshView(true); });
  window.addEventListener("hashchange", route);
  setInterval(renderOverview, 1000);   // ages ("present since 2s ago") move with the clock
  route();
  connect();
}
main();
