// The live dashboard: polls /dashboard/data (recent series the server keeps in a ring buffer, so the
// charts start with history) and /v1/slo every interval, and /v1/drift every DRIFT_EVERY_S, and redraws
// uPlot charts and the drift table in place.
// Each chart's card carries data-points (values it plotted) and data-state ("drawn" or "empty"), the drift
// panel data-state, data-signals and data-alerts, and <body> carries data-refreshes, so a test (or a
// curious operator) can read what was drawn.
"use strict";

const KEY_STORE = "inferline.adminKey";
const COLORS = ["#4e9af1", "#f5a524", "#3ecf8e", "#a78bfa", "#22d3ee", "#f472b6", "#a3e635", "#fb923c"];
const BAD = "#e5484d";
const MUTED = "#8b94a5";
const GRID = "#262c38";
const NO_TRAFFIC = "no traffic yet";
const BURN_WINDOW = "5m"; // the SLO chart's burn-rate window: the shortest, the first to move
// /v1/drift computes its statistics (and embeds new prompts) when asked, and its windows are hundreds of
// requests long: polling it at the charts' pace would cost the server more than it would show.
const DRIFT_EVERY_S = 15;

const state = {
  intervalS: 2,
  windowS: 900,
  xMin: 0,
  xMax: 1,
  refreshes: 0,
  plots: new Map(),
  slo: { t: [], routes: {}, why: "" },
  drift: { routes: [], why: "", polledAt: 0, view: null },
};

// ---- formatting -------------------------------------------------------------------------------

function compact(v) {
  if (v == null) return "–";
  const abs = Math.abs(v);
  if (abs >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (abs >= 1e3) return (v / 1e3).toFixed(1) + "k";
  if (abs >= 100 || Number.isInteger(v)) return v.toFixed(0);
  return String(Number(v.toFixed(abs >= 10 ? 1 : 2)));
}

function latest(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] != null) return values[i];
  return null;
}

function usd(v) {
  if (v == null) return "–";
  // Cents down to a cent; three significant digits below (a request often costs a fraction of a cent).
  return "$" + (v === 0 || Math.abs(v) >= 0.01 ? v.toFixed(2) : String(Number(v.toPrecision(3))));
}

const FORMATS = {
  "req/s": compact,
  "tokens/s": compact,
  ms: (v) => (v == null ? "–" : compact(v) + " ms"),
  requests: compact,
  "%": (v) => (v == null ? "–" : compact(v) + "%"),
  USD: usd,
  "× budget": (v) => (v == null ? "–" : compact(v) + "×"),
};

// ---- what each chart shows --------------------------------------------------------------------

const mapValues = (values, f) => values.map((v) => (v == null ? null : f(v)));

function cumulative(values) {
  let sum = 0;
  return values.map((v) => (sum += v || 0));
}

// Each spec turns the data into {series: [{label, values, color?, dash?}], t?, empty?}; `empty` names
// why there is nothing to draw. Charts of requests say "no traffic yet" until one has finished.
const SPECS = [
  {
    id: "requests", title: "Throughput", unit: "req/s", traffic: true,
    build: (d) => ({ series: [
      { label: "requests", values: d.requests_per_s },
      { label: "errors", values: d.errors_per_s, color: BAD },
    ] }),
  },
  {
    id: "tokens", title: "Token throughput", unit: "tokens/s", traffic: true,
    build: (d) => ({ series: [
      { label: "prompt", values: d.prompt_tokens_per_s },
      { label: "completion", values: d.completion_tokens_per_s },
    ] }),
  },
  {
    id: "ttft", title: "Time to first token", unit: "ms", traffic: true,
    build: (d) => ({ series: [
      { label: "p50", values: d.ttft_ms.p50 },
      { label: "p95", values: d.ttft_ms.p95 },
    ] }),
  },
  {
    id: "tpot", title: "Time per output token", unit: "ms", traffic: true,
    build: (d) => ({ series: [
      { label: "p50", values: d.tpot_ms.p50 },
      { label: "p95", values: d.tpot_ms.p95 },
    ] }),
  },
  {
    id: "queue", title: "Queue depth and running", unit: "requests",
    build: (d) => {
      const names = Object.keys(d.deployments);
      return {
        empty: names.length ? null : "no deployment is ready yet",
        series: names.flatMap((name, i) => [
          { label: `${name} queued`, values: d.deployments[name].queue_depth, color: COLORS[i % COLORS.length] },
          { label: `${name} running`, values: d.deployments[name].running, color: COLORS[i % COLORS.length], dash: true },
        ]),
      };
    },
  },
  {
    id: "kv", title: "KV-cache usage", unit: "%", max: 100,
    build: (d) => {
      const names = Object.keys(d.deployments).filter((n) => d.deployments[n].kv_usage.some((v) => v != null));
      return {
        empty: names.length ? null : "no KV cache: no local LLM deployment is ready",
        series: names.map((name) => ({ label: name, values: mapValues(d.deployments[name].kv_usage, (v) => v * 100) })),
      };
    },
  },
  {
    id: "tenant-requests", title: "Requests by tenant", unit: "req/s", traffic: true,
    build: (d) => ({ series: Object.entries(d.tenants).map(([name, s]) => ({ label: name, values: s.requests_per_s })) }),
  },
  {
    id: "tenant-cost", title: "Cost by tenant", unit: "USD", note: "cumulative over the window", traffic: true,
    build: (d) => ({ series: Object.entries(d.tenants).map(([name, s]) => ({ label: name, values: cumulative(s.cost_usd) })) }),
  },
  {
    id: "slo", title: "SLO burn rate", unit: "× budget", note: `${BURN_WINDOW} window, worst objective per route`,
    build: () => {
      const routes = Object.keys(state.slo.routes);
      return {
        t: state.slo.t,
        empty: routes.length ? null : state.slo.why,
        series: routes.map((route) => ({ label: route, values: state.slo.routes[route] })),
      };
    },
  },
];

function splitSpec(route) {
  return {
    id: `split-${route}`, title: `Router split · ${route}`, unit: "%", max: 100, note: "share of requests per arm",
    traffic: true,
    build: (d) => ({
      series: Object.entries(d.splits[route] || {}).map(([arm, shares]) => ({
        label: arm, values: mapValues(shares, (v) => v * 100),
      })),
    }),
  };
}

const NO_SPLITS = {
  id: "splits", title: "Router splits", unit: "%", max: 100, traffic: true,
  build: () => ({ empty: "no route has split traffic in the window", series: [] }),
};

function specsFor(data) {
  const routes = Object.keys(data.splits);
  return [...SPECS, ...(routes.length ? routes.map(splitSpec) : [NO_SPLITS])];
}

// ---- drawing ----------------------------------------------------------------------------------

function card(spec) {
  const section = document.createElement("section");
  section.className = "card";
  section.dataset.chart = spec.id;
  const title = document.createElement("h2");
  title.textContent = spec.title;
  const unit = document.createElement("small");
  unit.textContent = spec.note ? `${spec.unit} · ${spec.note}` : spec.unit;
  title.append(unit);
  const plot = document.createElement("div");
  plot.className = "plot";
  const empty = document.createElement("div");
  empty.className = "empty";
  plot.append(empty);
  section.append(title, plot);
  document.getElementById("charts").append(section);
  return { section, plot, empty, uplot: null, signature: "" };
}

// Time ticks as wall-clock time only (the window is minutes long: the date would only crowd the axis).
function clock(u, splits, axisIdx, space, incr) {
  const parts = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
  if (incr < 60) parts.second = "2-digit";
  return splits.map((t) => new Date(t * 1000).toLocaleTimeString([], parts));
}

// uPlot draws a value with no neighbour as nothing (a line needs two ends), and a bucket with the only
// request of a quiet minute is exactly such a value: mark those with a dot.
function isolated(u, sidx, show) {
  if (show) return null;
  const values = u.data[sidx];
  const idxs = [];
  for (let i = 0; i < values.length; i++) {
    if (values[i] != null && values[i - 1] == null && values[i + 1] == null) idxs.push(i);
  }
  return idxs.length ? idxs : null;
}

function plotOptions(spec, series, width) {
  const format = FORMATS[spec.unit];
  return {
    width,
    height: 200,
    legend: { live: true },
    cursor: { points: { size: 6 } },
    scales: {
      // Every chart spans the same stretch of time, so they can be read side by side.
      x: { time: true, range: () => [state.xMin, state.xMax] },
      y: { range: (u, min, max) => [0, spec.max || (max > 0 ? max * 1.15 : 1)] },
    },
    axes: [
      { stroke: MUTED, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 }, space: 70, values: clock },
      {
        stroke: MUTED, size: 64, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 },
        values: (u, values) => values.map(format),
      },
    ],
    series: [
      // Away from the cursor the legend reads the latest values.
      { label: "time", value: (u, v, sidx, idx) => (idx == null ? "latest" : new Date(v * 1000).toLocaleTimeString()) },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color || COLORS[i % COLORS.length],
        width: 2,
        dash: s.dash ? [6, 4] : undefined,
        value: (u, v, sidx, idx) => format(idx == null ? latest(u.data[sidx]) : v),
        points: { filter: isolated },
      })),
    ],
  };
}

function draw(view, spec, data, built) {
  const t = built.t || data.t;
  const columns = [t, ...built.series.map((s) => s.values)];
  const points = built.series.reduce((n, s) => n + s.values.filter((v) => v != null).length, 0);
  let why = spec.traffic && data.totals.requests === 0 ? NO_TRAFFIC : built.empty;
  if (!why && points === 0) why = "no data in the window yet";
  const signature = built.series.map((s) => s.label).join("\u0000");
  if (view.uplot && view.signature !== signature) {
    view.uplot.destroy();
    view.uplot = null;
  }
  if (!view.uplot) {
    view.uplot = new uPlot(plotOptions(spec, built.series, view.plot.clientWidth), columns, view.plot);
    view.signature = signature;
  } else {
    view.uplot.setData(columns);
  }
  view.empty.textContent = why || "";
  view.empty.hidden = !why;
  view.section.dataset.points = why ? 0 : points;
  view.section.dataset.state = why ? "empty" : "drawn";
}

function render(data) {
  const ends = [data.t[0], data.t[data.t.length - 1], state.slo.t[0], state.slo.t[state.slo.t.length - 1]];
  const known = ends.filter((t) => t != null);
  state.xMax = Math.max(...known);
  state.xMin = Math.min(Math.min(...known), state.xMax - 60);
  const specs = specsFor(data);
  const ids = new Set(specs.map((s) => s.id));
  for (const [id, view] of state.plots) {
    if (!ids.has(id)) {
      if (view.uplot) view.uplot.destroy();
      view.section.remove();
      state.plots.delete(id);
    }
  }
  for (const spec of specs) {
    if (!state.plots.has(spec.id)) state.plots.set(spec.id, card(spec));
    draw(state.plots.get(spec.id), spec, data, spec.build(data));
  }
}

function renderTotals(data) {
  const totals = data.totals;
  document.getElementById("kpi-requests").textContent = compact(totals.requests);
  const share = totals.requests ? (100 * totals.errors) / totals.requests : 0;
  document.getElementById("kpi-errors").textContent = totals.requests ? compact(share) + "%" : "–";
  document.getElementById("kpi-tokens").textContent =
    `${compact(totals.prompt_tokens)} / ${compact(totals.completion_tokens)}`;
  document.getElementById("kpi-cost").textContent = usd(totals.cost_usd);
  document.getElementById("window").textContent = `last ${Math.round(data.window_s / 60)} min`;
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

window.addEventListener("resize", () => {
  for (const view of state.plots.values()) {
    if (view.uplot) view.uplot.setSize({ width: view.plot.clientWidth, height: 200 });
  }
});

// ---- SLO burn: /v1/slo gives the current figures; the page keeps their history since it opened ----

function recordSlo(burns) {
  const slo = state.slo;
  const keep = Math.ceil(state.windowS / state.intervalS);
  slo.t.push(Date.now() / 1000);
  for (const route of Object.keys(burns)) {
    if (!slo.routes[route]) slo.routes[route] = slo.t.slice(1).map(() => null);
  }
  for (const [route, values] of Object.entries(slo.routes)) values.push(burns[route] ?? null);
  if (slo.t.length > keep) {
    slo.t.shift();
    for (const values of Object.values(slo.routes)) values.shift();
  }
}

// route -> the fastest-moving burn rate (the shortest window) of its worst objective. /v1/slo answers
// {routes: {route: {window_days, objectives: {name: {burn_rates: {"5m": ..., "1h": ...}, ...}}}}}.
function burnRates(body) {
  const burns = {};
  for (const [route, slo] of Object.entries((body && body.routes) || {})) {
    const rates = Object.values((slo && slo.objectives) || {})
      .map((objective) => (objective.burn_rates || {})[BURN_WINDOW])
      .filter((rate) => rate != null);
    if (rates.length) burns[route] = Math.max(...rates);
  }
  return burns;
}

// /v1/slo always needs an admin key: without admin_api_keys the dashboard is open but SLOs are not.
async function pollSlo() {
  let burns = {};
  state.slo.why = "no SLOs configured";
  try {
    const response = await fetch("/v1/slo", { headers: authHeaders(), cache: "no-store" });
    if (response.ok) burns = burnRates(await response.json());
    else if (response.status === 401 || response.status === 403) {
      state.slo.why = "SLO status needs an admin key (admin_api_keys)";
    }
  } catch (error) {
    state.slo.why = "SLO status could not be read";
  }
  recordSlo(burns);
}

// ---- drift: /v1/drift's signals per route and model version, as a table -----------------------

async function pollDrift() {
  const drift = state.drift;
  if (Date.now() / 1000 - drift.polledAt < DRIFT_EVERY_S) return;
  drift.polledAt = Date.now() / 1000;
  try {
    const response = await fetch("/v1/drift", { headers: authHeaders(), cache: "no-store" });
    if (response.ok) {
      const body = await response.json();
      drift.routes = body.routes || [];
      drift.why = !body.enabled
        ? "drift monitors are off (quality.drift.enabled)"
        : drift.routes.length ? "" : "no request on a route yet";
    } else {
      drift.routes = [];
      drift.why = response.status === 401 || response.status === 403
        ? "drift needs an admin key (admin_api_keys)"
        : await errorMessage(response);
    }
  } catch (error) {
    drift.why = "drift could not be read";
  }
}

// Effect sizes span 0.0004 (an MMD²) to 100 (a capped Cohen's d): three significant digits for all.
const effect = (v) => String(Number(v.toPrecision(3)));

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
}

function renderDrift() {
  const drift = state.drift;
  if (!drift.view) {
    const section = document.createElement("section");
    section.className = "card";
    section.dataset.panel = "drift";
    const title = document.createElement("h2");
    title.textContent = "Drift";
    const note = document.createElement("small");
    note.textContent = "current window against the reference, effect size and its threshold";
    title.append(note);
    const table = document.createElement("table");
    const empty = document.createElement("p");
    empty.className = "panel-empty";
    section.append(title, empty, table);
    document.getElementById("panels").append(section);
    drift.view = { section, table, empty };
  }
  const { section, table, empty } = drift.view;
  table.replaceChildren();
  const head = table.insertRow();
  for (const name of ["route", "version", "signal", "effect size", "threshold", ""]) {
    cell(head, name, name === "effect size" || name === "threshold" ? "head number" : "head");
  }
  let numSignals = 0;
  let numAlerts = 0;
  for (const report of drift.routes) {
    if (!report.signals.length) {
      const row = table.insertRow();
      cell(row, report.route);
      cell(row, report.model_version);
      cell(row, `filling the windows: ${report.num_reference} reference, ${report.num_current} current`, "muted");
      row.lastChild.colSpan = 4;
      continue;
    }
    for (const signal of report.signals) {
      const row = table.insertRow();
      row.className = signal.alert ? "alert" : "";
      cell(row, report.route);
      cell(row, report.model_version);
      cell(row, signal.metric);
      cell(row, effect(signal.value), "number");
      cell(row, effect(signal.threshold), "number muted");
      cell(row, signal.alert ? "drift" : "ok", signal.alert ? "bad" : "muted");
      numSignals += 1;
      numAlerts += signal.alert ? 1 : 0;
    }
  }
  empty.textContent = drift.why;
  empty.hidden = !drift.why;
  table.hidden = !drift.routes.length;
  section.dataset.state = drift.routes.length ? "drawn" : "empty";
  section.dataset.signals = numSignals;
  section.dataset.alerts = numAlerts;
}

// ---- polling and the admin key ----------------------------------------------------------------

function authHeaders() {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function askForKey(message) {
  const form = document.getElementById("login");
  form.hidden = false;
  document.getElementById("login-error").textContent = message;
  document.getElementById("updated").textContent = "waiting for an admin key";
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = document.getElementById("key").value.trim();
  if (!key) return;
  localStorage.setItem(KEY_STORE, key);
  document.getElementById("login").hidden = true;
  refresh();
});

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch (error) {
    return `the server answered ${response.status}`;
  }
}

function showBanner(message) {
  const banner = document.getElementById("banner");
  banner.textContent = message || "";
  banner.className = message ? "error" : "";
  banner.hidden = !message;
}

let timer = null;

async function refresh() {
  clearTimeout(timer);
  try {
    const response = await fetch("/dashboard/data", { headers: authHeaders(), cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      const hadKey = Boolean(localStorage.getItem(KEY_STORE));
      // A first visit says nothing about a missing key; a refused key, or a server that takes none, says why.
      askForKey(hadKey || response.status === 403 ? await errorMessage(response) : "");
      return;
    }
    if (!response.ok) throw new Error(`/dashboard/data answered ${response.status}`);
    const data = await response.json();
    state.intervalS = data.interval_s;
    state.windowS = data.window_s;
    await Promise.all([pollSlo(), pollDrift()]);
    render(data);
    renderDrift();
    renderTotals(data);
    showBanner("");
    state.refreshes += 1;
    document.body.dataset.refreshes = state.refreshes;
  } catch (error) {
    showBanner(`Could not refresh: ${error.message}. Retrying.`);
  }
  timer = setTimeout(refresh, state.intervalS * 1000);
}

refresh();
