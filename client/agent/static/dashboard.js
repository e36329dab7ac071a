// The agent dashboard: polls the JSON API, draws its own SVG charts, no external code.
// The bearer token is pasted once and kept in sessionStorage (this tab only); a URL
// fragment "#token=..." is accepted too and removed from the address bar at once.
"use strict";

const TOKEN_KEY = "pinnacle-agent-token";
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let lastStatus = null;
let lastBackups = null;
let settingsShown = null; // the settings as last loaded: only changed fields are sent
let pollTimer = null;
let lastJobId = null;
let lastJobState = null;
let jobPolled = false; // the first poll shows the last job as it was: nothing to react to

// ----- token ------------------------------------------------------------------------------
function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function showToken() {
  const has = token() !== "";
  $("token-form").classList.toggle("hidden", has);
  $("token-ok").classList.toggle("hidden", !has);
}

// ----- API --------------------------------------------------------------------------------
async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (token()) headers["Authorization"] = "Bearer " + token();
  }
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                  credentials: "omit", cache: "no-store" });
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const err = (data && data.error) || { code: "http_" + res.status, message: res.statusText };
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showToken();
      err.message = "Token missing or wrong: paste the output of `pinnacle-update token` above.";
    }
    const e = new Error(err.message);
    e.code = err.code;
    e.field = err.field || null;
    e.status = res.status;
    throw e;
  }
  return data;
}

function say(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = "message" + (kind === "info" ? " info" : "");
  if (!text) box.classList.add("hidden");
}

// ----- formatting -------------------------------------------------------------------------
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v : v.toFixed(1)) + " " + units[i];
}
function secs(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}
function when(ts) { return ts ? ts.replace("T", " ").replace("Z", "") : "–"; }
function text(id, value) { $(id).textContent = value === null || value === undefined || value === "" ? "–" : value; }
function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children || []) node.appendChild(c);
  return node;
}

// ----- rendering --------------------------------------------------------------------------
function renderStatus(s) {
  lastStatus = s;
  const inst = s.installed || {};
  text("installed-version", inst.version || (inst.error ? "error" : "nothing installed"));
  text("installed-slot", inst.slot);
  text("installed-channel", inst.channel);
  text("installed-state", inst.error || inst.state);
  text("installed-since", when(inst.installed));
  text("installed-previous", inst.previous_version ? inst.previous_version + " (slot " + inst.previous_slot + ")" : "none");

  const latest = s.available.latest;
  const pending = (s.available.releases || []).length > 0;  // newer releases, each marked (yanked, held, bad)
  text("latest-version", latest ? latest.version : (s.available.last_check ? (pending ? "none offered now" : "up to date") : "–"));
  const badge = $("latest-type");
  badge.classList.toggle("hidden", !latest);
  if (latest) { badge.textContent = latest.type; badge.className = "badge " + latest.type; }
  $("latest-notes").textContent = latest ? (latest.notes || "") : "";
  const check = s.available.last_check;
  let checked = "not checked yet";
  if (check && check.current_version !== inst.version) {
    checked = "last checked " + when(check.checked) + ", before " + (inst.version || "the last change") + " was installed";
  } else if (check) {
    checked = "checked " + when(check.checked) + " — " + check.reason;
  }
  $("last-check").textContent = checked;

  renderRollout(s.rollout || {});
  const settings = s.settings || {};
  text("loop-enabled", settings.enabled === undefined ? "–" :
       (settings.enabled ? "on, every " + secs(settings.check_interval) : "off"));
  text("loop-next", settings.enabled ? when(s.loop.next_round) : "–");
  text("loop-last", s.loop.last_result ? when(s.loop.last_round) + ": " + s.loop.last_result : "–");
  // A failing loop is shown with its cause: it is retried with backoff, and fixed by fixing the cause.
  const failing = s.loop.state === "failing";
  text("loop-state", failing ? "FAILING since " + when(s.loop.since) + " (" + s.loop.failures + " in a row, retry in " +
       secs(s.loop.retry_in_seconds) + "): " + s.loop.error : "running");
  $("loop-state").className = failing ? "bad-text" : "";

  const h = s.health;
  $("health-state").textContent = h ? (h.healthy ? "healthy" : "UNHEALTHY") : "no result yet";
  $("health-state").className = "big" + (h ? (h.healthy ? " ok-text" : " bad-text") : "");
  $("health-reason").textContent = h ? (h.reason || "") : "";
  $("health-when").textContent = h ? "checked " + when(h.checked) + " (" + h.source + ")" : "";
  const n = s.notifications || {};
  $("notify-state").textContent = settings.webhook || settings.email ?
    "notifications: " + n.delivered + " delivered, " + n.failed + " failed" + (n.last_error ? " (" + n.last_error + ")" : "") : "";

  renderReleases(s.available.releases || [], s.releases || s.available.releases || []);
  renderJob(s.job, s.busy);
  if (settingsShown && settings.channel && settingsShown.channel !== settings.channel) { loadSettings(); loadChannels(); }
}

// The rollout card: this machine's bucket for the newest release it could move to, the rollout's
// percent now and when this machine is offered it; when a number is unknown the agent says why.
function renderRollout(r) {
  if (!r.version) {
    text("rollout-version", "none");
    for (const id of ["rollout-bucket", "rollout-percent", "rollout-when"]) text(id, "–");
    $("rollout-why").textContent = r.why || "";
    return;
  }
  text("rollout-version", r.version + (r.type ? " (" + r.type + ")" : "") + " on " + r.channel);
  text("rollout-bucket", r.bucket.toFixed(2) + " of 100" + (r.group ? ", A/B " + r.group + " group" : ""));
  let percent = r.percent === null || r.percent === undefined ? "not staged (offered to all)" : r.percent + "%";
  if (r.rollout_state && r.rollout_state !== "active") percent += " (" + r.rollout_state + ")";
  text("rollout-percent", percent);
  const now = r.gets_it_at && r.rollout_time && r.gets_it_at <= r.rollout_time;
  text("rollout-when", now ? "offered now" : r.gets_it_at ? "gets it at " + when(r.gets_it_at) + " UTC" : "not yet");
  $("rollout-why").textContent = r.why + (r.schedule ? " · schedule: " + r.schedule : "");
}

const MARK_LABEL = { yanked: "yanked", held: "held", required: "required", bad: "marked bad", rolled_back: "rolled back" };

function markText(r) {
  return (r.marks || []).map((m) => MARK_LABEL[m.kind] + ": " + m.reason).join("; ");
}

// The version dropdown offers the newer releases; a yanked, held or locally bad one says so in its
// own label (installing it is then refused with the reason, or needs force on the CLI).
function renderReleases(newer, all) {
  const select = $("version-select");
  const chosen = select.value;
  select.textContent = "";
  for (const r of newer) {
    const marks = (r.marks || []).map((m) => MARK_LABEL[m.kind].toUpperCase()).join(", ");
    select.appendChild(el("option", { value: r.version, "data-marks": (r.marks || []).map((m) => m.kind).join(" "),
                                      text: r.version + " (" + r.type + ")" + (marks ? " — " + marks : "") }));
  }
  if (newer.some((r) => r.version === chosen)) {
    select.value = chosen;
  } else {  // first choice: the newest release without a mark, when there is one
    const plain = newer.find((r) => !(r.marks || []).length);
    if (plain) select.value = plain.version;
  }
  select.classList.toggle("hidden", newer.length === 0);
  const box = $("releases");
  box.textContent = "";
  for (const r of all) {
    const row = el("div", { class: "release" + (r.installed ? " installed" : ""), "data-version": r.version }, [
      el("span", { class: "v", text: r.version }),
      el("span", { class: "badge " + r.type, text: r.type }),
    ]);
    for (const m of r.marks || []) row.appendChild(el("span", { class: "mark " + m.kind, title: m.reason, text: MARK_LABEL[m.kind] }));
    row.appendChild(el("span", { class: "muted small", text: bytes(r.download_bytes) + " · published " + when(r.published) }));
    for (const m of r.marks || []) row.appendChild(el("span", { class: "mark-reason notes", text: MARK_LABEL[m.kind] + ": " + m.reason }));
    if (r.notes) row.appendChild(el("span", { class: "notes small", text: r.notes }));
    box.appendChild(row);
  }
  updateButtons();
}

function updateButtons() {
  const s = lastStatus;
  const busy = !s || s.busy;
  const hasRelease = s && (s.available.releases || []).length > 0;
  $("install-btn").disabled = busy || !hasRelease;
  $("install-btn").textContent = hasRelease ? "Install " + $("version-select").value : "Install";
  $("channel-switch").disabled = busy;
  $("check-btn").disabled = busy;
  $("rollback-btn").disabled = busy || !(s && s.installed && s.installed.previous_version);
}

function renderJob(job, busy) {
  const first = !jobPolled;
  jobPolled = true;
  const bar = $("progress-bar");
  if (!job) {
    bar.style.width = "0%";
    text("progress-text", "0%");
    $("progress-step").textContent = "idle";
    return;
  }
  const pct = job.percent || 0;
  bar.style.width = pct + "%";
  bar.className = "bar" + (job.state === "succeeded" ? " ok" : (job.state === "failed" || job.state === "rolled_back" ? " bad" : ""));
  $("progress-text").textContent = Math.round(pct) + "%";
  const label = { rollback: "rollback", auto: "automatic install", restore: "data restore" }[job.kind] || "install";
  $("progress-step").textContent = label + " " + (job.version || "") + ": " +
    (job.state === "running" ? job.step : job.state.replace("_", " "));
  $("progress-bytes").textContent = job.total ? bytes(job.bytes) + " / " + bytes(job.total) : "";
  $("progress-speed").textContent = job.bytes_per_second ? bytes(job.bytes_per_second) + "/s" : "";
  $("progress-eta").textContent = job.state === "running" && job.eta_seconds !== null ? "ETA " + secs(job.eta_seconds) : "";
  $("job-result").textContent = job.error ? job.error : "";
  $("job-result").className = "small" + (job.error ? " bad-text" : "");
  if (job.id !== lastJobId || job.state !== lastJobState) {
    // a job seen running has ended, or a new one started and ended between two polls (a fast install)
    const finished = !first && job.state !== "running" && (job.id !== lastJobId || lastJobState === "running");
    lastJobId = job.id; lastJobState = job.state;
    if (finished) { loadHistory(); loadAnalytics(); loadBackups(); }
  }
  schedule(busy || job.state === "running" ? 500 : 4000);
}

function renderHistory(data) {
  const body = $("history").querySelector("tbody");
  body.textContent = "";
  const kind = $("filter-op").value;
  let shown = 0;
  for (const r of data.records) {
    if (!kind && (r.op === "check" || r.op === "verify")) continue;
    shown++;
    const outcome = r.outcome || (r.op === "recover" ? "recovered" : "");
    body.appendChild(el("tr", {}, [
      el("td", { text: when(r.ts) }),
      el("td", { text: r.op || "" }),
      el("td", { text: r.from_version || "" }),
      el("td", { text: r.version || "" }),
      el("td", { class: "outcome-" + outcome, text: outcome }),
      el("td", { text: r.duration !== undefined ? secs(r.duration) : "" }),
      el("td", { text: r.bytes ? bytes(r.bytes) : "" }),
      el("td", { class: "reason", title: r.reason || (r.actions || []).join("; "), text: r.reason || (r.actions || []).join("; ") }),
    ]));
  }
  if (!shown) body.appendChild(el("tr", {}, [el("td", { colspan: "8", class: "muted", text: "no records match" })]));
  labelCells($("history"));
  $("history-count").textContent = shown + " shown of " + data.total + " matching" +
    (kind ? "" : " (checks and verifies hidden: pick them under Kind)");
}

function historyQuery() {
  const q = new URLSearchParams({ limit: "200" });
  for (const [name, id] of [["op", "filter-op"], ["outcome", "filter-outcome"], ["version", "filter-version"]]) {
    const v = $(id).value.trim();
    if (v) q.set(name, v);
  }
  return "/api/updates/history?" + q.toString();
}

function renderAnalytics(a) {
  const stats = [
    ["Updates", a.total_updates], ["Successful", a.successful_updates], ["Failed", a.failed_updates],
    ["Rollbacks", a.rollbacks], ["Avg install", a.average_install_time === null ? "–" : secs(a.average_install_time)],
    ["Downloaded", bytes(a.bytes_downloaded)], ["Saved by deltas", bytes(a.bytes_saved)],
    ["Last update", when(a.last_update_date)], ["Most common failure", a.most_common_failure || "none"],
  ];
  const box = $("stats");
  box.textContent = "";
  for (const [label, value] of stats) {
    const long = String(value).length > 24;  // a failure's message: small type, wrapped anywhere
    box.appendChild(el("div", { class: "card" }, [el("h2", { text: label }),
                                                  el("div", { class: "stat-value" + (long ? " long" : ""), text: String(value) })]));
  }
  const days = a.series.per_day.slice(-30);
  barChart($("chart-days"), days.map((d) => d.day.slice(5)), [
    { name: "successful", color: "#1f9d55", values: days.map((d) => d.updates - d.failures) },
    { name: "failed", color: "#d64545", values: days.map((d) => d.failures) },
    { name: "rollbacks", color: "#d98a00", values: days.map((d) => d.rollbacks) },
  ], (v) => String(v));
  const updates = a.series.updates.slice(-40);
  const timed = updates.filter((u) => u.duration !== null);
  lineChart($("chart-durations"), timed.map((u) => u.version || ""), timed.map((u) => u.duration),
            timed.map((u) => (u.outcome === "committed" ? "#2f6fde" : "#d64545")),
            (v) => v.toFixed(v >= 10 ? 0 : v >= 1 ? 1 : 2));
  barChart($("chart-saved"), updates.map((u) => u.version || ""), [
    { name: "saved", color: "#1f9d55", values: updates.map((u) => u.bytes_saved) },
    { name: "downloaded", color: "#2f6fde", values: updates.map((u) => u.bytes) },
  ], bytes, true);
}

// Data backups: one row each, newest first; the snapshot a rollback would restore is marked.
function renderBackups(data) {
  lastBackups = data;
  const rb = data.rollback || {};
  let line = data.count + " backup(s), " + bytes(data.bytes) + "; keeping " +
    (data.retention.max_backups || "any number") + " for " + (data.retention.max_rollback_days || "any number of") + " days. ";
  if (rb.target) {
    line += "A rollback to " + rb.target.version + (rb.restores ? (rb.restorable ? " restores backup " + rb.restores
      : " would need backup " + rb.restores + ", which was pruned: roll back keeping the data") : " keeps the data as it is") + ".";
  } else {
    line += "No previous version to roll back to.";
  }
  $("backups-summary").textContent = line;
  const body = $("backups").querySelector("tbody");
  body.textContent = "";
  for (const b of data.backups.slice().reverse()) {
    const versions = b.kind === "rejected" ? "data of " + (b.version || "–") + " (replaced by " + (b.restored_from || "–") + ")"
      : (b.version || "nothing") + " → " + (b.for_version || "–");
    const verify = el("button", { type: "button", class: "verify-btn", "data-id": b.id, text: "Verify" });
    const restore = el("button", { type: "button", class: "danger restore-btn", "data-id": b.id, text: "Restore" });
    verify.addEventListener("click", () => doVerifyBackup(b.id));
    restore.addEventListener("click", () => doRestoreBackup(b));
    body.appendChild(el("tr", { "data-id": b.id, class: b.id === rb.restores ? "rollback-snapshot" : "" }, [
      el("td", { class: "backup-id", text: b.id }),
      el("td", { text: b.kind }),
      el("td", { text: versions }),
      el("td", { text: String(b.files) }),
      el("td", { text: bytes(b.bytes) }),
      el("td", { text: b.method }),
      el("td", { text: b.age_days < 1 ? Math.round(b.age_days * 24 * 60) + " min" : b.age_days.toFixed(1) + " days" }),
      el("td", { class: "backup-actions" }, [verify, restore]),
    ]));
  }
  if (!data.backups.length) body.appendChild(el("tr", {}, [el("td", { colspan: "8", class: "muted", text: "no backups yet" })]));
  labelCells($("backups"));
}

// On a narrow screen each row is a block and each cell shows its column's name (CSS: data-label).
function labelCells(table) {
  const heads = Array.from(table.querySelectorAll("thead th")).map((th) => th.textContent);
  for (const row of table.querySelectorAll("tbody tr")) {
    Array.from(row.children).forEach((td, i) => { if (!td.hasAttribute("colspan") && heads[i]) td.setAttribute("data-label", heads[i]); });
  }
}

function backupResult(textValue, bad) {
  $("backup-result").textContent = textValue;
  $("backup-result").className = "small" + (bad ? " bad-text" : " ok-text");
}

async function doVerifyBackup(id) {
  if (needToken()) return;
  backupResult("verifying " + id + " …", false);
  try {
    const r = await api("POST", "/api/backups/" + encodeURIComponent(id) + "/verify", {});
    backupResult(r.ok ? "backup " + id + ": intact" :
      "backup " + id + ": " + r.problems.length + " problem(s): " + r.problems.slice(0, 5).join("; "), !r.ok);
  } catch (e) {
    backupResult("verify of " + id + " failed: " + e.message, true);
  }
}

async function doRestoreBackup(b) {
  if (needToken()) return;
  const running = (lastStatus && lastStatus.installed.version) || "the running version";
  if (!confirm("Put the data of backup " + b.id + " (" + b.files + " files, " + bytes(b.bytes) + ") in place under " +
               running + "? The application is stopped and started again; the data it replaces is kept as a new backup.")) return;
  backupResult("restoring " + b.id + " …", false);
  try {
    const r = await api("POST", "/api/backups/" + encodeURIComponent(b.id) + "/restore", {});
    backupResult("restored the data of backup " + r.backup + " under " + r.version +
      (r.data_rejected ? "; the replaced data is kept as backup " + r.data_rejected : "") +
      (r.notes.length ? " (note: " + r.notes.join("; ") + ")" : ""), false);
  } catch (e) {
    backupResult("restore of " + b.id + " refused: " + e.message, true);
  }
  loadBackups();
  await loadStatus();
  loadHistory();
}

// ----- SVG charts -------------------------------------------------------------------------
function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function frame(box, labels, maxValue, fmt) {
  box.textContent = "";
  const W = 460, H = 170, L = 52, R = 8, T = 10, B = 26;
  const svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, role: "img" });
  box.appendChild(svg);
  const y = (v) => T + (H - T - B) * (1 - v / (maxValue || 1));
  for (let i = 0; i <= 4; i++) {
    const v = (maxValue || 1) * i / 4;
    svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e6e9ee" }));
    const t = svgEl("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" });
    t.textContent = fmt(v);
    svg.appendChild(t);
  }
  if (labels.length === 0) {
    const t = svgEl("text", { x: (L + W) / 2, y: H / 2, "text-anchor": "middle" });
    t.textContent = "no data yet";
    svg.appendChild(t);
  }
  const step = (W - L - R) / Math.max(labels.length, 1);
  const every = Math.ceil(labels.length / 10);
  labels.forEach((label, i) => {
    if (i % every) return;
    const t = svgEl("text", { x: L + step * (i + 0.5), y: H - 8, "text-anchor": "middle" });
    t.textContent = label;
    svg.appendChild(t);
  });
  return { svg, y, step, L, H, B };
}

function legend(box, series) {
  const div = el("div", { class: "legend" });
  for (const s of series) {
    const swatch = el("i");
    swatch.style.background = s.color;
    div.appendChild(swatch);
    div.appendChild(document.createTextNode(s.name));
  }
  box.appendChild(div);
}

function barChart(box, labels, series, fmt, grouped) {
  const totals = labels.map((_, i) => grouped ? Math.max(...series.map((s) => s.values[i] || 0))
                                               : series.reduce((n, s) => n + (s.values[i] || 0), 0));
  const f = frame(box, labels, Math.max(1, ...totals), fmt);
  labels.forEach((label, i) => {
    let base = 0;
    series.forEach((s, k) => {
      const v = s.values[i] || 0;
      if (!v) return;
      const width = grouped ? f.step * 0.7 / series.length : f.step * 0.6;
      const x = f.L + f.step * i + (grouped ? f.step * 0.15 + width * k : f.step * 0.2);
      const top = grouped ? f.y(v) : f.y(base + v);
      const bottom = grouped ? f.y(0) : f.y(base);
      const rect = svgEl("rect", { x, y: top, width, height: Math.max(bottom - top, 1), fill: s.color, rx: 2 });
      const tip = svgEl("title", {});
      tip.textContent = label + " " + s.name + ": " + fmt(v);
      rect.appendChild(tip);
      f.svg.appendChild(rect);
      if (!grouped) base += v;
    });
  });
  legend(box, series);
}

function lineChart(box, labels, values, colors, fmt) {
  const f = frame(box, labels, Math.max(0.001, ...values) * 1.1, fmt);
  const pts = values.map((v, i) => [f.L + f.step * (i + 0.5), f.y(v)]);
  if (pts.length > 1) {
    f.svg.appendChild(svgEl("polyline", { points: pts.map((p) => p.join(",")).join(" "), fill: "none",
                                          stroke: "#9db8ec", "stroke-width": 2 }));
  }
  pts.forEach((p, i) => {
    const c = svgEl("circle", { cx: p[0], cy: p[1], r: 4, fill: colors[i] });
    const tip = svgEl("title", {});
    tip.textContent = labels[i] + ": " + fmt(values[i]) + " s";
    c.appendChild(tip);
    f.svg.appendChild(c);
  });
  legend(box, [{ name: "committed", color: "#2f6fde" }, { name: "failed", color: "#d64545" }]);
}

// ----- loading ----------------------------------------------------------------------------
async function loadStatus() {
  try {
    renderStatus(await api("GET", "/api/updates/status"));
  } catch (e) {
    say("Cannot reach the agent: " + e.message);
    schedule(5000);
  }
}
let historyAsked = 0;  // answers can arrive out of order (a filter changed while a poll was out): keep the last asked
async function loadHistory() {
  const mine = ++historyAsked;
  try {
    const data = await api("GET", historyQuery());
    if (mine === historyAsked) renderHistory(data);
  } catch (e) { if (mine === historyAsked) $("history-count").textContent = "history: " + e.message; }
}
async function loadAnalytics() { try { renderAnalytics(await api("GET", "/api/updates/analytics")); } catch (e) { /* next poll */ } }
async function loadBackups() { try { renderBackups(await api("GET", "/api/backups")); } catch (e) { /* next poll */ } }
async function loadHealth() {
  try {
    const h = await api("GET", "/api/health");
    const pill = $("agent-health");
    pill.textContent = "agent " + h.status;
    pill.className = "pill " + (h.status === "ok" ? "ok" : "bad");
    pill.title = h.loop && h.loop.error ? "update loop failing: " + h.loop.error : "";
  } catch (e) {
    $("agent-health").textContent = "agent unreachable";
    $("agent-health").className = "pill bad";
  }
}

function schedule(ms) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(loadStatus, ms);
}

function needToken() {
  if (token()) return false;
  say("Paste the agent token (run: pinnacle-update token) to check, install or roll back.");
  $("token-input").focus();
  return true;
}

// ----- actions ----------------------------------------------------------------------------
async function doCheck() {
  if (needToken()) return;
  $("check-btn").disabled = true;
  say("");
  try {
    const r = await api("POST", "/api/updates/check", {});
    say(r.update_available ? "Update available: " + r.version + " (" + r.type + ")" : "Nothing to install: " + r.reason, "info");
  } catch (e) {
    say("Check failed: " + e.message);
  }
  await loadStatus();
  loadHistory();
  loadChannels();  // a check also lists the repository's channels
}

function crossesMajor(version) {
  const releases = (lastStatus && lastStatus.available.releases) || [];  // newest first, newer than installed
  const at = releases.findIndex((r) => r.version === version);
  return at >= 0 && releases.slice(at).some((r) => r.type === "major");
}

async function doInstall() {
  if (needToken()) return;
  const version = $("version-select").value;
  if (!version) return;
  let confirmMajor = false;
  if (crossesMajor(version)) {
    if (!confirm("Installing " + version + " includes a MAJOR update. Breaking changes are likely. Install it?")) return;
    confirmMajor = true;
  }
  say("");
  try {
    await api("POST", "/api/updates/install/" + encodeURIComponent(version), { confirm_major: confirmMajor });
  } catch (e) {
    if (e.code === "confirmation_required" && confirm(e.message + "\nInstall anyway?")) {
      try {
        await api("POST", "/api/updates/install/" + encodeURIComponent(version), { confirm_major: true });
      } catch (e2) { say("Install refused: " + e2.message); }
    } else {
      say("Install refused: " + e.message);
    }
  }
  loadStatus();
}

async function doRollback() {
  if (needToken()) return;
  const prev = lastStatus && lastStatus.installed.previous_version;
  const rb = (lastBackups && lastBackups.rollback) || {};
  const data = rb.restores ? (rb.restorable ? " The data goes back to backup " + rb.restores + "; the current data is kept as a new backup."
    : " Its data backup " + rb.restores + " was pruned: the rollback will be refused (use the CLI's --keep-data).") : "";
  const leaving = (lastStatus && lastStatus.installed.version) || "the current version";
  const markBad = $("rollback-bad").checked;
  const mark = markBad ? " " + leaving + " is marked BAD: it is refused unless forced."
    : " " + leaving + " is recorded as rolled back by you: automatic updates skip it, installing it by name works.";
  if (!confirm("Switch back to " + prev + "?" + mark + data)) return;
  say("");
  try {
    const r = await api("POST", "/api/updates/rollback", markBad ? { mark_bad: true } : {});
    say("Rolled back " + r.from_version + " → " + r.version +
        (r.data_restored ? "; data restored from backup " + r.data_restored : ""), "info");
  } catch (e) {
    say("Rollback refused: " + e.message);
  }
  await loadStatus();
  loadHistory();
  loadAnalytics();
  loadBackups();
}

// ----- settings ---------------------------------------------------------------------------
// The form is built from GET /api/updates/config (client.config's types, defaults and help); the
// agent validates every value with client.config and a refusal is shown next to its field.
function fieldError(key, message) {
  const box = $("err-" + key);
  if (box) {
    box.textContent = message || "";
    box.closest(".field").classList.toggle("invalid", !!message);
  }
  return !!box;
}

function clearFieldErrors(form) {
  for (const box of form.querySelectorAll(".field-error")) fieldError(box.id.slice(4), "");
}

function renderSettings(data) {
  settingsShown = { channel: data.channel, values: {} };
  const box = $("settings-fields");
  box.textContent = "";
  for (const f of data.fields) {
    settingsShown.values[f.key] = f.value;
    const id = "set-" + f.key;
    const wrap = el("div", { class: "field", "data-key": f.key });
    if (f.type === "boolean") {
      const input = el("input", { type: "checkbox", id, name: f.key });
      input.checked = !!f.value;
      wrap.appendChild(el("label", { class: "check", for: id }, [input, document.createTextNode(" " + f.key)]));
    } else if (f.type === "list" && f.choices) {
      wrap.appendChild(el("label", { text: f.key }));
      const choices = el("div", { class: "choices", id, role: "group" });
      for (const c of f.choices) {
        const input = el("input", { type: "checkbox", name: f.key, value: c });
        input.checked = f.value.includes(c);
        choices.appendChild(el("label", {}, [input, document.createTextNode(" " + c)]));
      }
      wrap.appendChild(choices);
    } else {
      wrap.appendChild(el("label", { for: id, text: f.key }));
      const input = el("input", { type: f.type === "string" ? "text" : "number", id, name: f.key,
                                  step: f.type === "integer" ? "1" : "any" });
      input.value = String(f.value);
      wrap.appendChild(input);
    }
    wrap.appendChild(el("p", { class: "help muted small", text: f.help + " (default " + JSON.stringify(f.default) + ")" }));
    wrap.appendChild(el("p", { class: "field-error", id: "err-" + f.key, role: "alert" }));
    box.appendChild(wrap);
  }
}

function formValue(key) {
  const wrap = $("settings-fields").querySelector(".field[data-key='" + key + "']");
  const boxes = wrap.querySelectorAll(".choices input[type=checkbox]");
  if (boxes.length) return Array.from(boxes).filter((b) => b.checked).map((b) => b.value);
  const input = wrap.querySelector("input");
  if (input.type === "checkbox") return input.checked;
  if (input.type === "number") {
    // what was typed goes to the agent as a number when it is one, else as text for it to refuse
    const raw = input.value.trim();
    return raw !== "" && isFinite(Number(raw)) ? Number(raw) : raw;
  }
  return input.value;
}

async function loadSettings() {
  try { renderSettings(await api("GET", "/api/updates/config")); } catch (e) {
    $("settings-fields").textContent = "settings cannot be read: " + e.message;
  }
}

function settingsResult(message, bad) {
  $("settings-result").textContent = message;
  $("settings-result").className = "small " + (bad ? "bad-text" : "ok-text");
}

async function doSaveSettings(ev) {
  ev.preventDefault();
  if (needToken() || !settingsShown) return;
  const form = $("settings-form");
  clearFieldErrors(form);
  const changes = {};
  for (const key of Object.keys(settingsShown.values)) {
    const value = formValue(key);
    if (JSON.stringify(value) !== JSON.stringify(settingsShown.values[key])) changes[key] = value;
  }
  if (!Object.keys(changes).length) { settingsResult("nothing changed", false); return; }
  try {
    const r = await api("POST", "/api/updates/config", changes);
    for (const k of r.changed) settingsShown.values[k] = r.config[k];
    settingsResult("saved: " + r.changed.join(", "), false);
    loadStatus();
  } catch (e) {
    if (e.field && fieldError(e.field, e.message)) {
      settingsResult("not saved: " + e.field + " was refused (nothing changed)", true);
      const bad = $("set-" + e.field);
      if (bad && bad.focus) bad.focus();
    } else {
      settingsResult("not saved: " + e.message, true);
    }
  }
}

// ----- channels ---------------------------------------------------------------------------
async function loadChannels() {
  try {
    const data = await api("GET", "/api/updates/channels");
    const select = $("channel-select");
    select.textContent = "";
    for (const c of data.channels) {
      select.appendChild(el("option", { value: c.name, text: c.name + (c.current ? " (current)" : "") }));
    }
    select.value = data.current;
    $("channel-source").textContent = data.source === "repository"
      ? "the channels this repository offers" : "the usual channel names (" + data.error + ")";
  } catch (e) {
    $("channel-source").textContent = "channels cannot be listed: " + e.message;
  }
}

async function doSwitchChannel(ev) {
  ev.preventDefault();
  if (needToken()) return;
  const channel = $("channel-select").value;
  const downgrade = $("channel-downgrade").checked;
  fieldError("channel", "");
  const current = settingsShown ? settingsShown.channel : "";
  if (channel === current) { fieldError("channel", "already on channel " + channel); return; }
  if (!confirm("Follow channel " + channel + " from now on?" + (downgrade ? " If its newest release is older than the installed one, it is installed now." : ""))) return;
  $("channel-result").textContent = "switching to " + channel + " …";
  $("channel-result").className = "small";
  try {
    const r = await api("POST", "/api/updates/channel", { channel, allow_downgrade: downgrade });
    $("channel-result").textContent = "now on " + r.channel + " (was " + r.previous_channel + "): " + r.reason;
    $("channel-result").className = "small ok-text";
  } catch (e) {
    fieldError("channel", e.message);
    $("channel-result").textContent = "";
  }
  await loadChannels();
  await loadSettings();
  await loadStatus();
  loadHistory();
}

// ----- start ------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  showToken();
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("token-input").value.trim();
    if (value) { sessionStorage.setItem(TOKEN_KEY, value); $("token-input").value = ""; say(""); }
    showToken();
  });
  $("token-clear").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showToken(); });
  $("check-btn").addEventListener("click", doCheck);
  $("install-btn").addEventListener("click", doInstall);
  $("rollback-btn").addEventListener("click", doRollback);
  $("version-select").addEventListener("change", updateButtons);
  $("settings-form").addEventListener("submit", doSaveSettings);
  $("channel-form").addEventListener("submit", doSwitchChannel);
  $("history-filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadHistory(); });
  for (const id of ["filter-op", "filter-outcome"]) $(id).addEventListener("change", loadHistory);
  $("filter-version").addEventListener("input", () => { clearTimeout(window.filterTimer); window.filterTimer = setTimeout(loadHistory, 300); });
  loadStatus();
  loadHistory();
  loadAnalytics();
  loadBackups();
  loadHealth();
  loadSettings();
  loadChannels();
  setInterval(loadHealth, 10000);
  setInterval(() => { loadHistory(); loadAnalytics(); loadBackups(); loadChannels(); }, 30000);
});
