// The usage dashboard: signs in (MSAL.js in entra mode, a pasted development token in local mode), reads the
// API under /api/v1 with that token, and draws what it answers. It calls no other host than this one, except the
// sign-in authority in entra mode. Every figure carries data-figure / data-value so tests compare it with the API.

const API = "../v1";
const TOKEN_KEY = "meterline.dashboard.token";
const PALETTE = ["#0b5cad", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#be185d", "#4d7c0f", "#334155"];

const $ = (selector) => document.querySelector(selector);
const state = { config: null, token: null, msal: null, me: null, charts: [] };

// ---- formatting -------------------------------------------------------------------------------------------------

const integer = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
const percent = new Intl.NumberFormat("en", { style: "percent", maximumFractionDigits: 1 });
const num = (n) => integer.format(n);

function dateTimeIn(timeZone, options) {
  const format = new Intl.DateTimeFormat("en-GB", { timeZone, ...options });
  return (iso) => format.format(new Date(iso));
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child);
  }
  return node;
}

function setStatus(text) {
  $("#status").textContent = text;
}

// ---- the API ----------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || problem?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

// JSON, and problem+json for errors: a client that accepts only application/json gets Azure's error envelope.
const JSON_ACCEPT = "application/json, application/problem+json";

// A rate limit's refusal is retried after its Retry-After when that is short (a page load is several calls, and a
// plan with a small burst refuses some of them); a quota's (until the period ends) is not.
const RETRIES = 3;
const LONGEST_RETRY_SECS = 10;

async function api(path, { accept = JSON_ACCEPT } = {}) {
  let response;
  for (let attempt = 0; ; attempt += 1) {
    response = await fetch(`${API}${path}`, {
      headers: { Authorization: `Bearer ${state.token}`, Accept: accept },
      cache: "no-store",
    });
    const wait = Number(response.headers.get("Retry-After"));
    if (response.status !== 429 || attempt >= RETRIES || !(wait >= 0 && wait <= LONGEST_RETRY_SECS)) break;
    await new Promise((resolve) => setTimeout(resolve, Math.max(wait, 1) * 1000));
  }
  if (!response.ok) {
    let problem = null;
    try { problem = await response.json(); } catch { /* not a problem body */ }
    throw new ApiError(response.status, problem);
  }
  if (accept === "text/csv") return { blob: await response.blob(), headers: response.headers };
  return { body: await response.json(), headers: response.headers };
}

function query(params) {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return entries.length ? "?" + new URLSearchParams(entries).toString() : "";
}

// ---- sign-in ----------------------------------------------------------------------------------------------------

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = el("script", { src });
    script.addEventListener("load", resolve);
    script.addEventListener("error", () => reject(new Error(`cannot load ${src}`)));
    document.head.append(script);
  });
}

async function entraToken(platform) {
  const entra = state.config.entra;
  if (!entra.clientId) {
    showSignIn();
    $("#sign-in-button").hidden = true;
    $("#sign-in-unconfigured").hidden = false;
    return null;
  }
  if (!state.msal) {
    await loadScript("./vendor/msal-browser/msal-browser.min.js");
    const redirectUri = new URL("./", location.href).href.split("#")[0].split("?")[0];
    state.msal = new window.msal.PublicClientApplication({
      auth: { clientId: entra.clientId, authority: entra.authority, redirectUri, navigateToLoginRequestUrl: true },
      cache: { cacheLocation: "sessionStorage" },
    });
    await state.msal.initialize();
    const result = await state.msal.handleRedirectPromise();
    if (result?.account) state.msal.setActiveAccount(result.account);
  }
  const account = state.msal.getActiveAccount() || state.msal.getAllAccounts()[0];
  const scopes = [platform ? entra.platformScope : entra.usageScope];
  if (!account) {
    showSignIn();
    $("#sign-in-button").onclick = () => state.msal.loginRedirect({ scopes });
    return null;
  }
  state.msal.setActiveAccount(account);
  try {
    return (await state.msal.acquireTokenSilent({ scopes, account })).accessToken;
  } catch {
    await state.msal.acquireTokenRedirect({ scopes, account });
    return null;
  }
}

function showSignIn() {
  $("#sign-in").hidden = false;
  setStatus("Not signed in.");
  if (state.config.authMode === "entra") {
    $("#sign-in-entra").hidden = false;
  } else {
    $("#sign-in-local").hidden = false;
  }
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  if (state.msal) {
    state.msal.logoutRedirect({ postLogoutRedirectUri: new URL("./", location.href).href });
    return;
  }
  location.hash = "";
  location.reload();
}

// ---- the views ----------------------------------------------------------------------------------------------------

function parseRoute() {
  // Hashes: #tenant, #tenant=<id>, #tenant=<id>&period=<start>, #platform.
  const raw = location.hash.replace(/^#/, "");
  const [head, ...rest] = raw.split("&");
  const [view, tenantId] = head.split("=");
  const params = new URLSearchParams(rest.join("&"));
  return { view: view === "platform" ? "platform" : "tenant", tenantId: tenantId || null, period: params.get("period") };
}

function refuse(title, detail) {
  const box = $("#refusal");
  box.replaceChildren(el("h2", { text: title }), el("p", { text: detail }));
  box.hidden = false;
  box.dataset.refused = "true";
  setStatus(title);
}

function clearViews() {
  for (const chart of state.charts) chart.destroy();
  state.charts = [];
  $("#refusal").hidden = true;
  delete $("#refusal").dataset.refused;
  $("#tenant-view").hidden = true;
  $("#platform-view").hidden = true;
}

async function render() {
  clearViews();
  const { view, tenantId, period } = parseRoute();
  $("#nav-tenant").toggleAttribute("aria-current", view === "tenant");
  if (view === "tenant") $("#nav-tenant").setAttribute("aria-current", "page");
  $("#nav-platform").toggleAttribute("aria-current", view === "platform");
  if (view === "platform") $("#nav-platform").setAttribute("aria-current", "page");
  const token = await currentToken(view === "platform");
  if (!token) return;
  state.token = token;
  try {
    if (!state.me) state.me = (await api("/me")).body;
  } catch (error) {
    if (error.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      refuse("Your sign-in was not accepted", `${error.message}. Sign in again.`);
      showSignIn();
      return;
    }
    throw error;
  }
  const me = state.me;
  const platform = me.permissions.includes("Platform.Admin");
  $("#who").textContent = `${me.name || me.subject}${me.tenant ? ` · ${me.tenant.name}` : ""}`;
  $("#nav-platform").hidden = !platform;
  $("#sign-out").hidden = false;
  document.body.dataset.ready = "false";
  try {
    if (view === "platform") {
      if (!platform) {
        refuse("The platform view needs the Platform.Admin permission", "Your sign-in does not carry it.");
        return;
      }
      $("#platform-view").hidden = false;
      await renderPlatform();
    } else {
      if (!me.permissions.includes("Usage.Read")) {
        refuse(
          "You may not read usage",
          "This page needs the Usage.Read permission, and your sign-in does not carry it. Ask your tenant administrator to grant it.",
        );
        return;
      }
      $("#tenant-view").hidden = false;
      await renderTenant(tenantId, period);
    }
  } catch (error) {
    // A token that expired since the page loaded: sign in again, as on a first load.
    if (error instanceof ApiError && error.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      state.me = null;
      clearViews();
      refuse("Your sign-in is no longer accepted", `${error.message}. Sign in again.`);
      showSignIn();
      return;
    }
    if (error instanceof ApiError && (error.status === 403 || error.status === 404)) {
      $("#tenant-view").hidden = true;
      $("#platform-view").hidden = true;
      refuse(error.status === 404 ? "No such tenant" : "Not allowed", error.message);
      return;
    }
    throw error;
  } finally {
    document.body.dataset.ready = "true";
  }
}

async function currentToken(platform) {
  if (state.config.authMode === "entra") return entraToken(platform);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) showSignIn();
  return token;
}

// ---- figures and tables -------------------------------------------------------------------------------------------

function figure(name, label, value, { display, note, tone, meter } = {}) {
  return el(
    "div",
    { class: `card figure${tone ? " " + tone : ""}` },
    el("span", { class: "label", text: label }),
    el("span", { class: "value", "data-figure": name, "data-value": value ?? "", text: display ?? (value === null || value === undefined ? "—" : num(value)) }),
    meter !== undefined ? el("div", { class: "meter", "aria-hidden": "true" }, meterBar(meter)) : null,
    note ? el("span", { class: "note", text: note }) : null,
  );
}

function meterBar(fraction) {
  const bar = el("span");
  bar.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  return bar;
}

function fillTable(name, caption, columns, rows) {
  const table = document.querySelector(`[data-table="${name}"]`);
  const head = el("tr", {}, columns.map((c) => el("th", { scope: "col", class: c.num ? "num" : null, text: c.label })));
  const body = rows.length
    ? rows.map((row) =>
        el("tr", {}, columns.map((c, i) => {
          const cell = row[i];
          if (cell instanceof Node) return el(i === 0 ? "th" : "td", { scope: i === 0 ? "row" : null }, cell);
          return el(i === 0 ? "th" : "td", {
            scope: i === 0 ? "row" : null,
            class: c.num ? "num" : null,
            "data-value": typeof cell === "number" ? cell : null,
            text: typeof cell === "number" && c.format !== "raw" ? num(cell) : cell ?? "",
          });
        })),
      )
    : [el("tr", {}, el("td", { colspan: columns.length, text: "Nothing in this window." }))];
  table.replaceChildren(el("caption", { text: caption }), el("thead", {}, head), el("tbody", {}, body));
}

// ---- charts -------------------------------------------------------------------------------------------------------

function chartWidth(container) {
  return Math.max(280, container.clientWidth || container.parentElement.clientWidth - 32);
}

// A time axis from half a step before the first window to half a step after the last, read from the data: for a
// single point uPlot passes a maximum 1 000 days past it, which drew one day's figures on a three-year axis.
const timeRange = (stepSeconds) => (u, min, max) => {
  const xs = u.data?.[0] ?? [];
  const [first, last] = xs.length ? [xs[0], xs[xs.length - 1]] : [min, max];
  return [first - stepSeconds / 2, last + stepSeconds / 2];
};

// Records the seconds the x axis spans on the chart's element once drawn (what the browser tests read).
const spanHook = (container) => ({ draw: [(u) => (container.dataset.xSpan = String(Math.round(u.scales.x.max - u.scales.x.min)))] });

// Stacked bars: each series is drawn as the running total of itself and those after it, largest first, so the
// bars stack; the legend and the hover show each series' own value.
function stackedChart(name, xs, series, { timeZone, stepSeconds }) {
  const container = document.querySelector(`[data-chart="${name}"]`);
  container.replaceChildren();
  const stacked = series.map((_, i) => xs.map((__, j) => series.slice(i).reduce((sum, s) => sum + s.values[j], 0)));
  const options = {
    width: chartWidth(container),
    height: 240,
    tzDate: timeZone ? (ts) => window.uPlot.tzDate(new Date(ts * 1000), timeZone) : undefined,
    scales: { x: { time: true, range: timeRange(stepSeconds) }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    axes: [{}, { size: 56 }],
    legend: { live: true },
    hooks: spanHook(container),
    series: [
      {},
      ...series.map((s, i) => ({
        label: s.label,
        stroke: PALETTE[i % PALETTE.length],
        fill: PALETTE[i % PALETTE.length],
        paths: window.uPlot.paths.bars({ size: [0.8, 64] }),
        points: { show: false },
        value: (u, v, si, idx) => (idx === null || idx === undefined ? "—" : num(series[si - 1].values[idx])),
      })),
    ],
  };
  const chart = new window.uPlot(options, [xs, ...stacked], container);
  state.charts.push(chart);
  container.dataset.drawn = "true";
  return chart;
}

function lineChart(name, xs, series, { timeZone, yLabel, stepSeconds }) {
  const container = document.querySelector(`[data-chart="${name}"]`);
  container.replaceChildren();
  const chart = new window.uPlot(
    {
      width: chartWidth(container),
      height: 240,
      tzDate: timeZone ? (ts) => window.uPlot.tzDate(new Date(ts * 1000), timeZone) : undefined,
      scales: { x: { time: true, range: timeRange(stepSeconds) }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      axes: [{}, { size: 56, label: yLabel }],
      hooks: spanHook(container),
      series: [
        {},
        ...series.map((s, i) => ({
          label: s.label,
          stroke: PALETTE[i % PALETTE.length],
          width: 2,
          points: { show: true, size: 6 },
          value: (u, v) => (v === null || v === undefined ? "—" : s.format ? s.format(v) : num(v)),
        })),
      ],
    },
    [xs, ...series.map((s) => s.values)],
    container,
  );
  state.charts.push(chart);
  container.dataset.drawn = "true";
  return chart;
}

function categoryChart(name, labels, series) {
  const container = document.querySelector(`[data-chart="${name}"]`);
  container.replaceChildren();
  const xs = labels.map((_, i) => i);
  const chart = new window.uPlot(
    {
      width: chartWidth(container),
      height: 260,
      scales: { x: { time: false, range: [-0.6, Math.max(0.6, labels.length - 0.4)] }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      axes: [
        { values: (u, splits) => splits.map((v) => (Number.isInteger(v) && labels[v] ? labels[v].slice(0, 14) : "")), incrs: [1] },
        { size: 72 },
      ],
      series: [
        { label: "Tenant", value: (u, v) => (v === null || v === undefined ? "—" : labels[v]) },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: PALETTE[i % PALETTE.length],
          fill: PALETTE[i % PALETTE.length],
          paths: window.uPlot.paths.bars({ size: [0.6, 80], align: i === 0 ? -1 : 1 }),
          points: { show: false },
          value: (u, v) => (v === null || v === undefined ? "—" : num(v)),
        })),
      ],
    },
    [xs, ...series.map((s) => s.values)],
    container,
  );
  state.charts.push(chart);
  container.dataset.drawn = "true";
}

// Rows of a report grouped by `key`, as one series per key over the sorted windows.
function pivot(rows, key, metric) {
  const windows = [...new Set(rows.map((r) => r.windowStart))].sort();
  const keys = [...new Set(rows.map((r) => r[key] ?? ""))].sort();
  const index = new Map(windows.map((w, i) => [w, i]));
  const series = keys.map((k) => ({ label: k || "(none)", key: k, values: windows.map(() => 0) }));
  const byKey = new Map(series.map((s) => [s.key, s]));
  for (const row of rows) byKey.get(row[key] ?? "").values[index.get(row.windowStart)] += row[metric];
  series.sort((a, b) => b.values.reduce((x, y) => x + y, 0) - a.values.reduce((x, y) => x + y, 0));
  return { windows, series };
}

const seconds = (iso) => Date.parse(iso) / 1000;

// ---- tenant view --------------------------------------------------------------------------------------------------

async function renderTenant(tenantId, periodStart) {
  setStatus("Loading usage…");
  const scope = { tenantId };
  const summaryAnswer = await api(`/usage/summary${query(scope)}`);
  const summary = summaryAnswer.body;
  const tz = summary.timeZone;
  const day = dateTimeIn(tz, { day: "2-digit", month: "short", year: "numeric" });
  const dayHour = dateTimeIn(tz, { day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit" });

  // The periods to pick from: the current one, and every earlier one with calls (month windows are periods).
  const months = (await api(`/usage${query({ ...scope, granularity: "month" })}`)).body.value;
  const periods = [{ start: summary.periodStartsAt, end: summary.resetsAt, current: true }];
  for (const m of [...months].reverse()) {
    if (m.windowStart !== summary.periodStartsAt) periods.push({ start: m.windowStart, end: m.windowEnd, current: false });
  }
  const selected = periods.find((p) => p.start === periodStart) || periods[0];
  const picker = $("#period");
  picker.replaceChildren(
    ...periods.map((p) =>
      el("option", { value: p.start, selected: p === selected, text: `${day(p.start)} – ${day(new Date(Date.parse(p.end) - 1).toISOString())}${p.current ? " (current)" : ""}` }),
    ),
  );
  picker.onchange = () => {
    location.hash = `tenant${tenantId ? "=" + tenantId : ""}&period=${encodeURIComponent(picker.value)}`;
  };
  $("#time-zone").textContent = `Times in ${tz}, the tenant's time zone · as of ${dayHour(summary.asOf)}`;
  $("#tenant-title").textContent = tenantId ? `Tenant usage · ${tenantId}` : `Tenant usage · ${state.me.tenant?.name ?? ""}`;

  // The quota figures: of the current period, the limiter's counter; of an earlier one, its statement.
  const used = summary.unitsUsed;
  const quota = summary.quotaUnits;
  const share = quota > 0 ? used / quota : 0;
  const tone = share >= 1 ? "bad" : share >= 0.8 ? "warn" : null;
  const currentFigures = () => [
    figure("units-used", "Units used this period", used, { tone, meter: share, note: quota > 0 ? `${percent.format(share)} of ${num(quota)}` : null }),
    figure("quota-units", "Quota (with grants)", quota, { note: summary.grantedUnits ? `${num(summary.grantedUnits)} granted` : "no grants" }),
    figure("granted-units", "Granted units", summary.grantedUnits),
    figure("remaining-units", "Remaining", summary.remainingUnits),
    figure("overage-units", "Overage", summary.overageUnits, { tone: summary.overageUnits > 0 ? "bad" : null, note: `policy: ${summary.overagePolicy}` }),
    figure("projected-units", "Projected by period end", summary.projectedUnits, { note: `resets ${dayHour(summary.resetsAt)}` }),
    figure("projected-exhaustion", "Quota runs out", summary.projectedExhaustionAt ?? null, {
      display: summary.projectedExhaustionAt ? dayHour(summary.projectedExhaustionAt) : summary.remainingUnits === 0 ? "spent" : "not this period",
      tone: summary.projectedExhaustionAt || summary.remainingUnits === 0 ? "bad" : null,
      note: "at the period's rate so far",
    }),
  ];
  // A closed period's figures are its statement's (`periodStart` is the tenant's local date the period starts).
  const localDate = new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit" });
  const closedFigures = (statement) =>
    statement
      ? [
          figure("units-used", "Units used in the period shown", statement.usedUnits, { note: `statement ${statement.period}` }),
          figure("quota-units", "Quota (with grants)", statement.quotaUnits, { note: statement.grantedUnits ? `${num(statement.grantedUnits)} granted` : "no grants" }),
          figure("overage-units", "Overage", statement.overageUnits, { tone: statement.overageUnits > 0 ? "bad" : null }),
          figure("amount-due", "Amount due", statement.amountDueMicros, { display: money(statement.amountDueMicros, statement.currency) }),
        ]
      : [figure("units-used", "Units used in the period shown", null, { display: "no statement", note: "the period has not been closed yet" })];

  const range = { ...scope, from: selected.start, to: selected.end };
  const [daily, dailyTotals, operations, clients, hourly, statements] = await Promise.all([
    api(`/usage${query({ ...range, granularity: "day", groupBy: "operation" })}`),
    api(`/usage${query({ ...range, granularity: "day" })}`),
    api(`/usage${query({ ...range, granularity: "month", groupBy: "operation" })}`),
    api(`/usage${query({ ...range, granularity: "month", groupBy: "client" })}`),
    api(`/usage${query({ ...scope, granularity: "hour", groupBy: "operation", from: new Date(Date.parse(summary.asOf) - 48 * 3600 * 1000).toISOString() })}`),
    api(`/billing/statements${query(scope)}`),
  ]);

  if (selected.current) {
    $("#quota-figures").replaceChildren(...currentFigures());
  } else {
    const start = localDate.format(new Date(selected.start));
    $("#quota-figures").replaceChildren(...closedFigures(statements.body.value.find((s) => s.periodStart === start)));
  }

  // Daily calls by operation.
  const d = pivot(daily.body.value, "operationId", "calls");
  stackedChart("daily", d.windows.map(seconds), d.series, { timeZone: tz, stepSeconds: 86400 });
  fillTable(
    "daily",
    "Calls per local day and operation",
    [{ label: "Day" }, ...d.series.map((s) => ({ label: s.label, num: true })), { label: "Total", num: true }],
    d.windows.map((w, j) => [day(w), ...d.series.map((s) => s.values[j]), d.series.reduce((sum, s) => sum + s.values[j], 0)]),
  );

  // Hourly calls, the last two days.
  const h = pivot(hourly.body.value, "operationId", "calls");
  stackedChart("hourly", h.windows.map(seconds), h.series, { timeZone: tz, stepSeconds: 3600 });
  fillTable(
    "hourly",
    "Calls per hour and operation",
    [{ label: "Hour" }, ...h.series.map((s) => ({ label: s.label, num: true })), { label: "Total", num: true }],
    h.windows.map((w, j) => [dayHour(w), ...h.series.map((s) => s.values[j]), h.series.reduce((sum, s) => sum + s.values[j], 0)]),
  );

  // Errors and latency per day, from the per-day totals.
  const totals = dailyTotals.body.value;
  const xs = totals.map((r) => seconds(r.windowStart));
  lineChart(
    "errors",
    xs,
    [
      { label: "Errors", values: totals.map((r) => r.errors) },
      { label: "Refused by rate limit", values: totals.map((r) => r.rateLimited) },
      { label: "Refused by quota", values: totals.map((r) => r.quotaRefused) },
      { label: "Error rate %", values: totals.map((r) => (r.calls ? Math.round((1000 * r.errors) / r.calls) / 10 : 0)), format: (v) => `${v} %` },
    ],
    { timeZone: tz, yLabel: "calls / %", stepSeconds: 86400 },
  );
  fillTable(
    "errors",
    "Calls answered 400 or above per day, and the calls among them that a rate limit or a quota refused (429)",
    [{ label: "Day" }, { label: "Calls", num: true }, { label: "Errors", num: true }, { label: "Error rate", num: true }, { label: "Refused by rate limit", num: true }, { label: "Refused by quota", num: true }],
    totals.map((r) => [day(r.windowStart), r.calls, r.errors, r.calls ? percent.format(r.errors / r.calls) : "—", r.rateLimited, r.quotaRefused]),
  );
  const ms = (micros) => Math.round(micros / 100) / 10;
  lineChart(
    "latency",
    xs,
    [
      { label: "p50 ms", values: totals.map((r) => ms(r.latency.p50Micros)), format: (v) => `${v} ms` },
      { label: "p95 ms", values: totals.map((r) => ms(r.latency.p95Micros)), format: (v) => `${v} ms` },
    ],
    { timeZone: tz, yLabel: "ms", stepSeconds: 86400 },
  );
  fillTable(
    "latency",
    "Latency per day in milliseconds (p50 and p95 are upper bounds from the recorded histogram)",
    [{ label: "Day" }, { label: "p50", num: true, format: "raw" }, { label: "p95", num: true, format: "raw" }, { label: "avg", num: true, format: "raw" }, { label: "max", num: true, format: "raw" }],
    totals.map((r) => [day(r.windowStart), ms(r.latency.p50Micros), ms(r.latency.p95Micros), ms(r.latency.avgMicros), ms(r.latency.maxMicros)]),
  );

  // The period by operation and by client.
  const ops = [...operations.body.value].sort((a, b) => b.calls - a.calls);
  fillTable(
    "operations",
    `${day(selected.start)} onwards`,
    [{ label: "Operation" }, { label: "Calls", num: true }, { label: "Units", num: true }, { label: "Billable", num: true }, { label: "Errors", num: true }, { label: "Error rate", num: true }, { label: "p50 ms", num: true, format: "raw" }, { label: "p95 ms", num: true, format: "raw" }],
    ops.map((r) => [r.operationId, r.calls, r.units, r.billableUnits, r.errors, r.calls ? percent.format(r.errors / r.calls) : "—", ms(r.latency.p50Micros), ms(r.latency.p95Micros)]),
  );
  const periodCalls = ops.reduce((s, r) => s + r.calls, 0);
  const periodErrors = ops.reduce((s, r) => s + r.errors, 0);
  const periodRateLimited = ops.reduce((s, r) => s + r.rateLimited, 0);
  const periodQuotaRefused = ops.reduce((s, r) => s + r.quotaRefused, 0);
  $("#quota-figures").append(
    figure("period-calls", "Calls in the period shown", periodCalls, { note: "this page's own reads included" }),
    figure("period-errors", "Errors in the period shown", periodErrors, { note: periodCalls ? `${percent.format(periodErrors / periodCalls)} of calls` : null }),
    figure("period-rate-limited", "Refused by rate limit", periodRateLimited, { note: "429, this period" }),
    figure("period-quota-refused", "Refused by quota", periodQuotaRefused, { note: "429, this period" }),
  );
  const top = [...clients.body.value].sort((a, b) => b.calls - a.calls).slice(0, 10);
  fillTable(
    "clients",
    "The ten applications with the most calls",
    [{ label: "Client (azp)" }, { label: "Calls", num: true }, { label: "Units", num: true }, { label: "Errors", num: true }],
    top.map((r) => [r.clientId || "(none)", r.calls, r.units, r.errors]),
  );

  // The limits in force: the plan's, and the RateLimit-Policy header the API sends with every answer. The
  // headers are the caller's: an administrator reading another tenant sees its own, and is told so.
  const limits = $("#limits");
  const policy = summaryAnswer.headers.get("RateLimit-Policy");
  const limit = summaryAnswer.headers.get("RateLimit");
  const own = !tenantId || tenantId === state.me?.tenant?.id;
  const yours = own ? "" : " (your own calls)";
  limits.replaceChildren(
    el("dt", { text: "Requests per minute" }), el("dd", { "data-figure": "requests-per-minute", "data-value": summary.requestsPerMinute, text: num(summary.requestsPerMinute) }),
    el("dt", { text: "Burst" }), el("dd", { "data-figure": "burst", "data-value": summary.burst, text: num(summary.burst) }),
    el("dt", { text: "Over quota" }), el("dd", { text: summary.overagePolicy === "block" ? "calls are refused (block)" : "calls go on and are billed as overage (allow)" }),
    el("dt", { text: "Plan" }), el("dd", { text: summary.plan }),
    el("dt", { text: `RateLimit-Policy${yours}` }), el("dd", {}, el("code", { "data-figure": "ratelimit-policy", text: policy ?? "(not sent)" })),
    el("dt", { text: `RateLimit${yours}` }), el("dd", {}, el("code", { text: limit ?? "(not sent)" })),
  );

  // Statements, each with its CSV.
  const list = statements.body.value;
  fillTable(
    "statements",
    "Issued monthly statements, newest first",
    [{ label: "Period" }, { label: "Used units", num: true }, { label: "Overage units", num: true }, { label: "Amount due", num: true }, { label: "CSV" }],
    list.map((s) => [s.period, s.usedUnits, s.overageUnits, money(s.amountDueMicros, s.currency), csvButton(s.period, tenantId)]),
  );
  setStatus(`Usage of ${day(selected.start)} – ${day(new Date(Date.parse(selected.end) - 1).toISOString())}`);
}

// An amount in millionths of `currency`, with that currency's own minor units (none for JPY, two for EUR).
function money(micros, currency) {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(micros / 1e6);
  } catch {
    return `${(micros / 1e6).toFixed(2)} ${currency}`;
  }
}

function csvButton(period, tenantId) {
  const button = el("button", { type: "button", class: "link", "aria-label": `Download the ${period} statement as CSV`, text: "CSV" });
  button.addEventListener("click", async () => {
    const { blob } = await api(`/billing/statements/${encodeURIComponent(period)}${query({ tenantId })}`, { accept: "text/csv" });
    const link = el("a", { href: URL.createObjectURL(blob), download: `statement-${period}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
  });
  return button;
}

// ---- platform view ------------------------------------------------------------------------------------------------

async function renderPlatform() {
  setStatus("Loading the platform…");
  const [tenants, pipeline] = await Promise.all([api("/usage/tenants"), api("/usage/pipeline")]);
  const list = tenants.body.value;
  const p = pipeline.body;
  const when = dateTimeIn("UTC", { day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit" });
  $("#platform-as-of").textContent = `As of ${when(p.asOf)} UTC${tenants.body.truncated ? " · the first 1000 tenants" : ""}`;
  const lag = p.rollup.lagSeconds;
  $("#pipeline-figures").replaceChildren(
    figure("tenants", "Tenants", list.length),
    figure("near-quota", "Near or over quota", list.filter((t) => (t.usedPercent ?? 0) >= 80).length),
    figure("rollup-lag-seconds", "Rollup lag (seconds)", lag ?? null, {
      tone: p.rollup.laggingSince ? "bad" : null,
      note: p.rollup.completeThrough ? `complete through ${when(p.rollup.completeThrough)}` : "not caught up yet",
    }),
    figure("outbox-due", "Outbox backlog", p.outbox.due, { display: `${num(p.outbox.due)}${p.outbox.capped ? "+" : ""}`, tone: p.outbox.due > 0 ? "warn" : null, note: p.outbox.oldestCreatedAt ? `oldest ${when(p.outbox.oldestCreatedAt)}` : "nothing waiting" }),
    figure("quarantine-open", "Quarantined messages", p.quarantine.open, { display: `${num(p.quarantine.open)}${p.quarantine.capped ? "+" : ""}`, tone: p.quarantine.open > 0 ? "bad" : null, note: "handler quarantine list" }),
  );
  const link = (t) => el("a", { href: `#tenant=${t.tenantId}`, text: t.name });
  const columns = [{ label: "Tenant" }, { label: "Plan" }, { label: "Used", num: true }, { label: "Quota", num: true }, { label: "Used %", num: true, format: "raw" }, { label: "Overage", num: true }];
  const row = (t) => [link(t), t.plan, t.unitsUsed, t.quotaUnits, t.usedPercent ?? "—", t.overageUnits];
  fillTable("by-usage", "Most units used first", columns, list.slice(0, 25).map(row));
  const byOverage = list.filter((t) => t.overageUnits > 0).sort((a, b) => b.overageUnits - a.overageUnits);
  fillTable("by-overage", "Most overage first; tenants without overage are left out", columns, byOverage.slice(0, 25).map(row));
  const near = list.filter((t) => (t.usedPercent ?? 0) >= 80).sort((a, b) => (b.usedPercent ?? 0) - (a.usedPercent ?? 0));
  fillTable("near-quota", "Highest share of quota first", columns, near.map(row));
  const top = list.slice(0, 10);
  categoryChart("tenants", top.map((t) => t.name), [
    { label: "Units used", values: top.map((t) => t.unitsUsed) },
    { label: "Overage units", values: top.map((t) => t.overageUnits) },
  ]);
  fillTable(
    "tenant-chart",
    "The ten tenants using the most",
    [{ label: "Tenant" }, { label: "Used", num: true }, { label: "Overage", num: true }, { label: "Quota", num: true }],
    top.map((t) => [t.name, t.unitsUsed, t.overageUnits, t.quotaUnits]),
  );
  setStatus(`${num(list.length)} tenants`);
}

// ---- start ------------------------------------------------------------------------------------------------------

async function start() {
  state.config = await (await fetch("./config.json", { cache: "no-store" })).json();
  $("#sign-in-local").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("#dev-token").value.trim().replace(/^Bearer\s+/i, "");
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("#sign-in").hidden = true;
    state.me = null;
    show();
  });
  $("#sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", show);
  let resizing;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      for (const chart of state.charts) chart.setSize({ width: chartWidth(chart.root.parentElement), height: chart.height });
    }, 150);
  });
  await show();
}

async function show() {
  try {
    await render();
  } catch (error) {
    $("#tenant-view").hidden = true;
    $("#platform-view").hidden = true;
    refuse("The dashboard could not load", error.message);
    document.body.dataset.ready = "true";
  }
}

// uPlot is a deferred classic script; modules run after it, so it is defined here.
start();
