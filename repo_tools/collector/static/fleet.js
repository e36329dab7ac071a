// The collector's fleet page. Reads /v1/fleet/report and /v1/fleet/activity with the session cookie and
// draws its own SVG. Every string from the API was written by some client (cause texts, A/B groups),
// so it only ever reaches the document through textContent: never innerHTML, never an attribute
// that is parsed as markup or code.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const COLORS = { ok: "#1f8a4c", bad: "#c73a3a", warn: "#c9820a", line: "#2c64c9", grid: "#e3e7ed" };

function byId(id) { return document.getElementById(id); }

function node(tag, text, cls) {
  const n = document.createElement(tag);
  if (text !== undefined && text !== null) n.textContent = String(text);
  if (cls) n.className = cls;
  return n;
}

function shape(tag, attrs, tip) {
  const n = document.createElementNS(NS, tag);
  Object.keys(attrs).forEach((k) => n.setAttribute(k, String(attrs[k])));
  if (tip) {
    const t = document.createElementNS(NS, "title");
    t.textContent = tip;
    n.appendChild(t);
  }
  return n;
}

// ----- the numbers as the table shows them (tests/collector/test_page.py formats them the same way)
const fmt = {
  pct(x) { return (100 * x).toFixed(1); },
  rate(t) {
    if (t.success_rate === null) return "–";
    const [lo, hi] = t.success_interval;
    return fmt.pct(t.success_rate) + " % [" + fmt.pct(lo) + "–" + fmt.pct(hi) + "]";
  },
  causes(counts) {
    const names = Object.keys(counts);
    if (!names.length) return "0";
    const total = names.reduce((n, k) => n + counts[k], 0);
    return total + " (" + names.map((k) => k + " " + counts[k]).join(", ") + ")";
  },
  time(t) {
    const it = t.install_time;
    return it.median === null ? "–" : it.median.toFixed(1) + " / " + it.p95.toFixed(1) + " s";
  },
  size(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let u = 0;
    while (n >= 1024 && u < units.length - 1) { n /= 1024; u += 1; }
    return (u === 0 ? String(n) : n.toFixed(1)) + " " + units[u];
  },
  release(r) { return r.channel + "/" + r.platform + "/" + (r.version || "(none)"); },
};

// ----- the releases table -------------------------------------------------------------------------
function tallyRow(label, tally, cls) {
  const tr = node("tr", null, cls);
  const cells = [
    ["release", label], ["offered", tally.offered], ["attempted", tally.attempted],
    ["succeeded", tally.succeeded], ["rolled-back", fmt.causes(tally.rolled_back)],
    ["failed", fmt.causes(tally.failed)], ["success", fmt.rate(tally)], ["time", fmt.time(tally)],
    ["saved", fmt.size(tally.bytes_saved)],
  ];
  for (const [name, value] of cells) {
    const td = node("td", value, name);
    if (["offered", "attempted", "succeeded", "saved"].includes(name)) td.classList.add("num");
    tr.appendChild(td);
  }
  return tr;
}

function drawReleases(report) {
  const body = byId("releases").tBodies[0];
  body.replaceChildren();
  for (const r of report.releases) {
    const row = tallyRow(fmt.release(r), r, "release-row");
    row.dataset.release = fmt.release(r);
    body.appendChild(row);
    for (const [group, tally] of Object.entries(r.groups)) {
      const sub = tallyRow("group " + group, tally, "group-row");
      sub.dataset.release = fmt.release(r);
      sub.dataset.group = group;
      body.appendChild(sub);
    }
  }
  if (!report.releases.length) {
    const td = node("td", "no install reports yet", "dim");
    td.colSpan = 9;
    body.appendChild(node("tr")).appendChild(td);
  }
}

// ----- A/B groups compared (the release's `comparisons`, as `fleet report` prints them) ------------------
function signed(v, rate) {
  const text = rate ? (100 * v).toFixed(2) + " %" : Number(v.toPrecision(4)).toString();
  return (v >= 0 ? "+" : "") + text;
}

function drawComparisons(report) {
  const body = byId("ab").tBodies[0];
  body.replaceChildren();
  for (const r of report.releases) {
    for (const c of r.comparisons || []) {
      const rate = c.metric === "success_rate";
      const tr = node("tr", null, "ab-row");
      tr.dataset.release = fmt.release(r);
      tr.dataset.metric = c.metric;
      const told = c.difference === null ? "no data in a group" :
        signed(c.difference, rate) + " [" + signed(c.interval[0], rate) + ", " + signed(c.interval[1], rate) + "]";
      const cells = [["release", fmt.release(r)], ["metric", c.metric], ["groups", c.groups[0] + " − " + c.groups[1]],
                     ["n", c.n[0] + " / " + c.n[1]], ["difference", told],
                     ["verdict", c.winner === null ? c.reason : c.reason.split(":")[0]]];
      const labels = { release: "Release", metric: "Metric", groups: "Groups", n: "n", difference: "Difference",
                       verdict: "Verdict" };
      for (const [name, value] of cells) tr.appendChild(node("td", value, name)).dataset.label = labels[name];
      tr.lastChild.classList.add(c.winner === null ? "dim" : "winner");
      body.appendChild(tr);
    }
  }
  if (!body.rows.length) {
    const td = node("td", "no release with A/B groups in this window", "dim");
    td.colSpan = 6;
    body.appendChild(node("tr")).appendChild(td);
  }
}

// ----- charts -----------------------------------------------------------------------------------
// A chart's viewBox is as wide as its box in CSS pixels (text stays readable on a phone) and 220 high;
// `plotArea` draws the y grid and returns the scales. The charts are drawn again when the window resizes.
function plotArea(box, yMax, yLabel, count) {
  box.replaceChildren();
  const size = { w: Math.max(260, Math.round(box.clientWidth || 600)), h: 220, left: 52, right: 10, top: 12, bottom: 40 };
  const svg = shape("svg", { viewBox: "0 0 " + size.w + " " + size.h, role: "img" });
  box.appendChild(svg);
  const inner = { w: size.w - size.left - size.right, h: size.h - size.top - size.bottom };
  const y = (v) => size.top + inner.h * (1 - v / yMax);
  for (let k = 0; k <= 4; k += 1) {
    const v = (yMax * k) / 4;
    svg.appendChild(shape("line", { x1: size.left, x2: size.w - size.right, y1: y(v), y2: y(v), stroke: COLORS.grid }));
    const label = shape("text", { x: size.left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" });
    label.textContent = yLabel(v);
    svg.appendChild(label);
  }
  if (!count) {
    const empty = shape("text", { x: size.w / 2, y: size.h / 2, "text-anchor": "middle", class: "axis" });
    empty.textContent = "nothing reported in this window";
    svg.appendChild(empty);
  }
  const slot = inner.w / Math.max(count, 1);
  const x = (i) => size.left + slot * (i + 0.5);
  const xLabel = (i, text) => {
    const t = shape("text", { x: x(i), y: size.h - size.bottom + 16, "text-anchor": "middle", class: "axis" });
    t.textContent = text;
    svg.appendChild(t);
  };
  return { svg, x, y, slot, xLabel, every: Math.max(1, Math.ceil((count * 72) / inner.w)) };  // labels 72 px apart at least
}

function drawRate(activity) {
  const perHour = new Map();
  for (const h of activity.hours) {
    const sum = perHour.get(h.hour) || { attempted: 0, succeeded: 0 };
    sum.attempted += h.attempted;
    sum.succeeded += h.succeeded;
    perHour.set(h.hour, sum);
  }
  const hours = [...perHour.keys()].filter((k) => perHour.get(k).attempted > 0).sort();
  const area = plotArea(byId("chart-rate"), 100, (v) => v.toFixed(0) + " %", hours.length);
  const points = hours.map((h, i) => [area.x(i), area.y((100 * perHour.get(h).succeeded) / perHour.get(h).attempted)]);
  if (points.length > 1) {
    area.svg.appendChild(shape("polyline", { points: points.map((p) => p.join(",")).join(" "), fill: "none",
                                             stroke: COLORS.line, "stroke-width": 2 }));
  }
  hours.forEach((h, i) => {
    const s = perHour.get(h);
    const tip = h.replace("T", " ").replace(":00:00Z", ":00") + " UTC: " + s.succeeded + " of " + s.attempted +
      " installs committed (" + fmt.pct(s.succeeded / s.attempted) + " %)";
    const good = s.succeeded === s.attempted;
    area.svg.appendChild(shape("circle", { cx: points[i][0], cy: points[i][1], r: 4, class: "point",
                                           fill: good ? COLORS.ok : COLORS.warn }, tip));
    if (i % area.every === 0) area.xLabel(i, h.slice(5, 13).replace("T", " ") + "h");
  });
}

function drawBars(box, entries, color) {
  const top = Math.max(1, ...entries.map((e) => e.value));
  const area = plotArea(box, top, (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1)), entries.length);
  entries.forEach((e, i) => {
    const width = Math.min(area.slot * 0.7, 60);
    area.svg.appendChild(shape("rect", { x: area.x(i) - width / 2, y: area.y(e.value), width,
                                         height: Math.max(area.y(0) - area.y(e.value), 1), rx: 2, class: "bar",
                                         fill: color }, e.label + ": " + e.value));
    if (i % area.every === 0) area.xLabel(i, e.short);
  });
}

function drawVersions(report) {
  drawBars(byId("chart-versions"), report.versions.map((v) => ({
    value: v.installs, label: v.channel + "/" + v.platform + " " + (v.version || "(none)"),
    short: v.version || "(none)",
  })), COLORS.line);
}

function drawCauses(report) {
  const totals = {};
  for (const r of report.releases) {
    for (const [cause, n] of Object.entries(r.rolled_back)) totals[cause] = (totals[cause] || 0) + n;
    if (r.manual_rollbacks) totals.manual = (totals.manual || 0) + r.manual_rollbacks;
  }
  const entries = Object.keys(totals).sort().map((c) => ({ value: totals[c], label: c, short: c }));
  drawBars(byId("chart-causes"), entries, COLORS.warn);
}

// ----- the latest problems ------------------------------------------------------------------------
function drawProblems(activity) {
  const body = byId("problems").tBodies[0];
  body.replaceChildren();
  for (const p of activity.problems) {
    const tr = node("tr");
    tr.appendChild(node("td", p.at.replace("T", " ").replace("Z", "")));
    tr.appendChild(node("td", fmt.release(p)));
    tr.appendChild(node("td", p.kind + " " + p.outcome.replace("_", " ")));
    tr.appendChild(node("td", p.cause));
    tr.appendChild(node("td", p.cause_text, "cause-text"));
    body.appendChild(tr);
  }
  if (!activity.problems.length) {
    const td = node("td", "none in this window", "dim");
    td.colSpan = 5;
    body.appendChild(node("tr")).appendChild(td);
  }
}

// ----- the rollout timeline -------------------------------------------------------------------------
// The decisions watch logged in the repository (GET /v1/fleet/decisions, from `collector serve --repo`),
// per release: a strip with one mark per decision over time, then the list with each one's evidence.
const ACTIONS = { advance: COLORS.ok, hold: COLORS.warn, halt: COLORS.bad, yank: COLORS.bad };

function statistic(v) { return v === "inf" ? "∞" : Number(v).toPrecision(3); }

function evidenceText(d) {
  const e = d.evidence;
  if (!e || typeof e !== "object") return "";
  const parts = [e.attempted + " attempted", e.installs + " install ids"];
  if (e.step_installs !== undefined) parts.push(e.step_installs + " in this step");
  for (const c of e.evidence || []) {
    const rate = c.rate === null ? "–" : fmt.pct(c.rate) + " %";
    parts.push(c["class"] + " " + c.failures + "/" + c.trials + " (" + rate + ", tolerated " + fmt.pct(c.null_rate) +
               " %) M " + statistic(c.statistic) + " / " + statistic(c.threshold));
  }
  return parts.join(" · ");
}

function when(at) { return at.replace("T", " ").replace("Z", ""); }

function drawStrip(box, events) {
  box.replaceChildren();
  const w = Math.max(260, Math.round(box.clientWidth || 600));
  const size = { w, h: 56, left: 12, right: 12, mid: 22 };
  const svg = shape("svg", { viewBox: "0 0 " + w + " " + size.h, role: "img" });
  box.appendChild(svg);
  const times = events.map((d) => Date.parse(d.at));
  const first = Math.min(...times);
  const span = Math.max(Math.max(...times) - first, 1);
  const x = (t) => size.left + ((w - size.left - size.right) * (t - first)) / span;
  svg.appendChild(shape("line", { x1: size.left, x2: w - size.right, y1: size.mid, y2: size.mid, stroke: COLORS.grid,
                                  "stroke-width": 2 }));
  events.forEach((d, i) => {
    const tip = when(d.at) + " UTC: " + d.action + " (" + d.status + ") " + (d.reason || "");
    svg.appendChild(shape("circle", { cx: x(times[i]), cy: size.mid, r: 6, class: "tl-mark",
                                      fill: ACTIONS[d.action] || COLORS.line }, tip));
  });
  for (const [t, anchor] of [[first, "start"], [first + span, "end"]]) {
    const label = shape("text", { x: anchor === "start" ? size.left : w - size.right, y: size.h - 8,
                                  "text-anchor": anchor, class: "axis" });
    label.textContent = new Date(t).toISOString().slice(5, 16).replace("T", " ");
    svg.appendChild(label);
  }
}

function releasesOf(decisions) {
  const by = new Map();
  for (const d of decisions) {
    const name = fmt.release(d);
    if (!by.has(name)) by.set(name, []);
    by.get(name).push(d);
  }
  // the release decided about most recently first
  return [...by.entries()].sort((a, b) => (a[1][a[1].length - 1].at < b[1][b[1].length - 1].at ? 1 : -1));
}

function drawTimeline(data) {
  const box = byId("timeline");
  box.replaceChildren();
  const note = byId("timeline-note");
  if (!data.repository) {
    note.textContent = "No repository: start the collector with --repo REPO_DIR to show the decisions watch made.";
    return;
  }
  note.textContent = data.decisions.length ? "Decisions of pinnacle-release watch, with their evidence (M: the " +
    "likelihood ratio against its threshold)." : "watch has made no decision in this window.";
  for (const [name, events] of releasesOf(data.decisions)) {
    const block = node("div", null, "tl-release");
    block.dataset.release = name;
    block.appendChild(node("h3", name));
    const strip = node("div", null, "tl-strip");
    block.appendChild(strip);
    const list = node("ol", null, "tl");
    for (const d of [...events].reverse()) {  // newest first in the list
      const li = node("li", null, "tl-event action-" + d.action);
      li.dataset.action = d.action;
      li.dataset.status = d.status;
      const head = node("div", null, "tl-head");
      head.appendChild(node("time", when(d.at) + " UTC", "dim small"));
      head.appendChild(node("span", d.action, "badge action-" + d.action));
      if (d.percent !== undefined && d.percent !== null) {
        const step = d.to_step !== undefined ? " → step " + (d.to_step + 1) : d.step !== undefined ? " (step " + (d.step + 1) + ")" : "";
        head.appendChild(node("span", "at " + d.percent + " %" + step, "small"));
      }
      head.appendChild(node("span", d.status, "tl-status dim small"));
      li.appendChild(head);
      li.appendChild(node("div", d.reason || "", "tl-reason"));
      li.appendChild(node("div", evidenceText(d), "tl-evidence"));
      list.appendChild(li);
    }
    block.appendChild(list);
    box.appendChild(block);
  }
  drawStrips();
}

function drawStrips() {
  if (!shown || !shown.decisions.repository) return;
  const groups = new Map(releasesOf(shown.decisions.decisions));
  for (const block of byId("timeline").querySelectorAll(".tl-release")) {
    drawStrip(block.querySelector(".tl-strip"), groups.get(block.dataset.release) || []);
  }
}

// ----- loading ----------------------------------------------------------------------------------
async function read(path) {
  const since = byId("window").value;
  const answer = await fetch(path + (since ? "?since=" + encodeURIComponent(since) : ""),
                             { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
  if (answer.status === 401) throw new Error("the session has ended: reload the page and enter the read token");
  let data = null;
  try { data = await answer.json(); } catch (e) { data = null; }
  if (!answer.ok) throw new Error((data && data.error) || "HTTP " + answer.status);
  return data;
}

function notice(text) {
  const box = byId("notice");
  box.textContent = text;
  box.classList.toggle("hidden", !text);
}

let shown = null;

function drawCharts() {
  if (!shown) return;
  drawRate(shown.activity);
  drawVersions(shown.report);
  drawCauses(shown.report);
  drawStrips();
}

async function refresh() {
  try {
    const [report, activity, decisions] = await Promise.all([
      read("/v1/fleet/report"), read("/v1/fleet/activity"), read("/v1/fleet/decisions")]);
    shown = { report, activity, decisions };
    drawReleases(report);
    drawComparisons(report);
    drawCharts();
    drawProblems(activity);
    drawTimeline(decisions);
    byId("generated").textContent = "as of " + report.generated_at.replace("T", " ").replace("Z", " UTC");
    document.body.dataset.loaded = "yes";
    notice("");
  } catch (e) {
    notice("Cannot read the fleet: " + e.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  byId("window").addEventListener("change", refresh);
  let resized = null;
  window.addEventListener("resize", () => { clearTimeout(resized); resized = setTimeout(drawCharts, 100); });
  refresh();
  setInterval(refresh, 60000);
});
