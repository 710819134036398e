// The customer's page: every figure is read from /dashboard/data/<name>, which answers
// exactly what the API answers, and drawn with Chart.js (served from this app). Money
// is shown to the cent; the exact amount is in each cell's title and data-exact.
"use strict";

const PALETTE = ["#1d4ed8", "#be185d", "#15803d", "#c2410c", "#6d28d9", "#0e7490", "#a16207", "#475569",
  "#b91c1c", "#4d7c0f", "#7e22ce", "#0369a1"];
const range = document.body.dataset;
const FILTERS = { key: range.filterKey, provider: range.filterProvider, model: range.filterModel, task_type: range.filterTaskType };
const filtered = Object.entries(FILTERS).filter(([, v]) => v).map(([k, v]) => `&${k}=${encodeURIComponent(v)}`).join("");
const between = `start_date=${range.start}&end_date=${range.end}`;

// The n-th series' colour: the palette, then hues spread around the wheel.
const colour = (i) => PALETTE[i] || `hsl(${(i * 137) % 360} 60% 38%)`;

function chart(id, type, labels, datasets, options) {
  const { stacked = true, money = false, yTitle } = options;
  const value = (v) => (money ? `$${v}` : Number(v).toLocaleString("en-US"));
  return new Chart(document.getElementById(id), {
    type,
    data: { labels, datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "nearest", intersect: true },
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 12 } },
        tooltip: {
          callbacks: {
            // The exact amount the API answered, not the float the bar is drawn from.
            label: (item) => {
              const exact = item.dataset.exact ? item.dataset.exact[item.dataIndex] : null;
              const shown = exact !== null && exact !== undefined ? `$${pages.decimal(exact)}` : value(item.raw);
              return `${item.dataset.label}: ${shown}`;
            },
          },
        },
      },
      scales: {
        x: { stacked },
        y: {
          stacked,
          beginAtZero: true,
          title: { display: Boolean(yTitle), text: yTitle },
          ticks: { callback: (v) => value(v) },
        },
      },
    },
  });
}

function days() {
  const out = [];
  for (let day = new Date(range.start + "T00:00:00Z"); day <= new Date(range.end + "T00:00:00Z"); day.setUTCDate(day.getUTCDate() + 1)) {
    out.push(day.toISOString().slice(0, 10));
  }
  return out;
}

function unpricedNote(figures) {
  return figures.unpriced_events ? `${pages.count(figures.unpriced_events)} calls unpriced, not in this cost` : "";
}

// A cost cell: unpriced calls are said to be unpriced, never shown as free.
function costCell(figures) {
  if (figures.unpriced_events && figures.unpriced_events === figures.events) {
    return { text: "unpriced", cls: "unpriced" };
  }
  const cell = pages.amount(figures.cost);
  if (figures.unpriced_events) cell.text += ` + ${pages.count(figures.unpriced_events)} unpriced`;
  return cell;
}

function fillOptions(name, values) {
  const select = document.querySelector(`select[data-options="${name}"]`);
  const chosen = FILTERS[name];
  for (const value of [...new Set([...values, ...(chosen ? [chosen] : [])])].sort()) {
    const option = new Option(value, value, false, value === chosen);
    select.add(option);
  }
}

async function options() {
  const all = await pages.data(`/dashboard/data/usage?${between}&granularity=total&group_by=provider,model`);
  const groups = all.periods.length ? all.periods[0].groups : [];
  fillOptions("provider", groups.map((g) => g.provider));
  fillOptions("model", groups.map((g) => g.model));
  const taskSelect = document.getElementById("task_type");
  if (range.start < range.hourlyFrom) {
    taskSelect.disabled = true;
    taskSelect.title = `task types are kept from ${range.hourlyFrom}`;
    return;
  }
  const tasks = await pages.data(`/dashboard/data/usage?${between}&granularity=total&group_by=task_type`);
  fillOptions("task_type", (tasks.periods.length ? tasks.periods[0].groups : []).map((g) => g.task_type || "(none)").filter((t) => t !== "(none)"));
}

async function usage() {
  const [daily, total] = await Promise.all([
    pages.data(`/dashboard/data/usage?${between}&granularity=day&group_by=model${filtered}`),
    pages.data(`/dashboard/data/usage?${between}&granularity=total&group_by=provider,model${filtered}`),
  ]);
  pages.figure("range_cost", pages.money(daily.totals.cost), daily.totals.cost);
  pages.figure("range_unpriced", unpricedNote(daily.totals));
  pages.figure("range_tokens", pages.count(daily.totals.tokens_total));
  const labels = days();
  const byDay = new Map(daily.periods.map((period) => [period.period, period]));
  const models = [...new Set(daily.periods.flatMap((period) => period.groups.map((g) => g.model)))].sort();
  const groupOf = (day, model) => (byDay.get(day)?.groups || []).find((g) => g.model === model);
  chart("spend-chart", "bar", labels, models.map((model, i) => ({
    label: model,
    backgroundColor: colour(i),
    data: labels.map((day) => Number(groupOf(day, model)?.cost || 0)),
    exact: labels.map((day) => groupOf(day, model)?.cost || "0"),
  })), { money: true, yTitle: "USD" });
  const busiest = daily.periods.reduce((best, p) => (best && Number(best.cost) >= Number(p.cost) ? best : p), null);
  document.getElementById("spend-summary").textContent = daily.periods.length
    ? `${pages.money(daily.totals.cost)} over ${labels.length} days across ${models.length} models; the most in a day ${pages.money(busiest.cost)} on ${busiest.period}.`
    : "No spend in this range.";
  pages.fill("per-day", labels.map((day) => [day, pages.amount(byDay.get(day)?.cost || "0"), pages.count(byDay.get(day)?.tokens_total || 0)]));
  const sum = (day, field) => (byDay.get(day)?.groups || []).reduce((n, g) => n + g[field], 0);
  const kinds = [
    ["input (not cached)", (d) => sum(d, "tokens_input") - sum(d, "tokens_cache_read") - sum(d, "tokens_cache_write")],
    ["cache reads", (d) => sum(d, "tokens_cache_read")],
    ["cache writes", (d) => sum(d, "tokens_cache_write")],
    ["output", (d) => sum(d, "tokens_output")],
  ];
  chart("tokens-chart", "bar", labels, kinds.map(([label, of], i) => ({
    label, backgroundColor: colour(i), data: labels.map(of),
  })), { yTitle: "tokens" });
  document.getElementById("tokens-summary").textContent =
    `${pages.count(daily.totals.tokens_total)} tokens: ${pages.count(daily.totals.tokens_input)} in (${pages.count(daily.totals.tokens_cache_read)} from the cache), ${pages.count(daily.totals.tokens_output)} out.`;
  const groups = total.periods.length ? total.periods[0].groups : [];
  groups.sort((a, b) => Number(b.cost) - Number(a.cost));
  pages.fill("breakdown", groups.map((g) => [
    g.provider, g.model, pages.count(g.events), pages.count(g.tokens_input),
    pages.count(g.tokens_cache_read), pages.count(g.tokens_cache_write),
    pages.count(g.tokens_input_audio), pages.count(g.tokens_output),
    pages.count(g.tokens_output_reasoning), pages.count(g.tokens_output_audio), costCell(g),
  ]), "No usage in this range.");
}

function budgetState(b) {
  if (Number(b.spent) >= Number(b.effective_limit)) return { text: "limit reached", cls: "over" };
  if (b.projected_over) return { text: "projected over the limit", cls: "over" };
  return { text: "on track", cls: "ok" };
}

async function forecast() {
  const body = await pages.data("/dashboard/data/forecast");
  pages.figure("month_to_date", pages.money(body.cost.month_to_date), body.cost.month_to_date);
  pages.figure("projected_month", pages.money(body.cost.projected_month), body.cost.projected_month);
  const change = body.cost.change_percent;
  pages.figure("change_percent", change === null ? "no usage then" : `${change > 0 ? "+" : ""}${change}%`);
  pages.figure("method", `Projection: ${body.method}.`);
  const amount = (b, value) => (b.metric === "usd" ? pages.amount(value) : pages.count(value));
  pages.fill("budgets", body.budgets.map((b) => [
    `${b.metric === "usd" ? "USD" : "tokens"} per ${b.period.replace("_", " ")}${b.api_key_id ? ` (key ${b.api_key_id})` : ""}`,
    b.period_end.slice(0, 10), amount(b, b.effective_limit), amount(b, b.spent), amount(b, b.projected),
    b.projected_percent === null ? null : { text: `${b.projected_percent}%`, cls: b.projected_over ? "over" : null },
    budgetState(b),
  ]), "No budgets set.", (i) => (budgetState(body.budgets[i]).cls === "over" ? "over" : null));
}

async function modelPerformance() {
  const body = await pages.data(`/dashboard/data/performance?${between}${filtered}`);
  const models = body.models.filter((m) => m.timed_calls > 0);
  chart("latency-chart", "bar", models.map((m) => m.model), ["p50", "p95", "p99"].map((q, i) => ({
    label: q,
    backgroundColor: colour(i),
    data: models.map((m) => m.latency_seconds[q]),
  })), { stacked: false, yTitle: "seconds" });
  pages.fill("model-performance", body.models.map((m) => [
    m.provider, m.model, pages.count(m.calls),
    m.error_rate === null ? null : `${(m.error_rate * 100).toFixed(2)}%`,
    m.latency_seconds.p50, m.latency_seconds.p95, m.latency_seconds.p99, m.output_tokens_per_second,
  ]), "No calls in this range.");
}

const UNIT_NAMES = {
  input_tokens: "input", cache_read_tokens: "cache read", cache_write_tokens: "cache write",
  output_tokens: "output", input_audio_tokens: "audio in", output_audio_tokens: "audio out",
  cache_audio_read_tokens: "cached audio", requests: "request",
};

function why(call) {
  if (!call.lines.length) return call.pricing_status === "priced" ? "–" : "unpriced: no price for this model at the time";
  return { list: call.lines.map((l) => `${pages.count(l.units)} ${UNIT_NAMES[l.unit] || l.unit} × $${pages.decimal(l.rate)} = $${pages.decimal(l.amount)}`) };
}

async function calls(executionId) {
  const wanted = executionId ? `&execution_id=${encodeURIComponent(executionId)}` : "&limit=25";
  const body = await pages.data(`/dashboard/data/calls?${between}${filtered}${wanted}`);
  pages.fill("calls", body.calls.map((c) => [
    c.created_at.slice(0, 19).replace("T", " "), c.execution_id, c.key.label, c.model, c.task_type, c.status,
    `${pages.count(c.tokens_input)} / ${pages.count(c.tokens_output)}`,
    c.cost === null ? { text: "unpriced", cls: "unpriced" } : pages.amount(c.cost), why(c),
  ]), executionId ? `No call with execution id ${executionId} in this range.` : "No calls in this range.");
  document.getElementById("calls-note").textContent = executionId
    ? `${body.calls.length ? "Found" : "Not found"}: ${executionId}.`
    : `The latest ${body.calls.length} calls of the range.`;
}

document.getElementById("call-search").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  const field = document.getElementById("execution-id");
  calls(field.value.trim()).catch((error) => pages.status(`Could not search: ${error.message}`));
});
document.getElementById("latest-calls").addEventListener("click", () => {
  document.getElementById("execution-id").value = "";
  calls("").catch((error) => pages.status(`Could not load the calls: ${error.message}`));
});

async function recommendations() {
  const body = await pages.data(`/dashboard/data/recommendations?days=${Math.min(366, Math.max(1, days().length))}`);
  document.getElementById("recommendations-note").textContent = body.note;
  // The window is the last N complete days (the breakdown's range ends today, and
  // charged each call at its own day's prices): the note says which.
  const caching = (m) => (m.caching.available ? pages.amount(m.caching.saving) : "no cache price");
  const rows = body.models.flatMap((m) => (m.cheaper_models.length ? m.cheaper_models : [null]).map((c) => [
    m.model, pages.amount(m.cost), pages.amount(m.cost_at_today_prices), caching(m),
    c ? `${c.model} (${c.provider})` : "none cheaper", c ? pages.amount(c.cost) : null, c ? pages.amount(c.saving) : null,
  ]));
  pages.fill("recommendations", rows, "No usage in this range.");
}

const ALERT_NAMES = {
  "budget.threshold_reached": "budget threshold",
  "credits.low_balance": "low credit balance",
  "credits.expiring": "credit expiring soon",
  "credits.recharge_failed": "auto-recharge payment failed",
};

async function alerts() {
  const body = await pages.data("/dashboard/data/alerts");
  pages.fill("alerts", body.alerts.map((a) => [
    a.created_at.slice(0, 16).replace("T", " "), ALERT_NAMES[a.type] || a.type,
    a.budget_id === null ? null : `${a.threshold_percent}%`, pages.decimal(a.spent),
    pages.decimal(a.limit), a.status,
  ]), "No alerts.");
}

const when = (instant) => (instant ? instant.slice(0, 16).replace("T", " ") : null);

async function credits() {
  const body = await pages.data("/dashboard/data/credits");
  if (!body.prepaid) return;
  const c = body.credits;
  document.getElementById("credits").hidden = false;
  pages.figure("credit_balance", pages.money(c.balance), c.balance);
  // Its state, as the low-balance notice sees it: at or under the threshold, or used up.
  const low = c.low_balance_at !== null && Number(c.balance) <= Number(c.low_balance_at);
  const state = Number(c.balance) <= 0 ? "used up" : low ? `low: at or under ${pages.money(c.low_balance_at)}` : "";
  pages.figure("credit_state", state);
  document.querySelector('[data-figure="credit_balance"]').closest(".card").classList.toggle("low", Boolean(state));
  pages.figure("credit_overage", c.overage === "block" ? "calls are refused" : "billed as usage");
  const r = c.auto_recharge;
  pages.figure("credit_recharge", r.threshold === null ? "off"
    : `${pages.money(r.amount)} below ${pages.money(r.threshold)}${r.paused ? " (paused: payments failed)" : ""}`);
  pages.figure("credit_uncovered", pages.money(c.uncovered), c.uncovered);
  pages.fill("credit-grants", c.grants.map((g) => [
    when(g.effective_at), g.category, pages.amount(g.amount), pages.amount(g.remaining), g.priority,
    when(g.expires_at) || "never", g.closed_at ? "closed" : "open",
  ]), "No grants.");
  pages.fill("credit-ledger", c.entries.map((e) => [
    when(e.at), e.kind, pages.amount(e.amount), e.grant_id, e.note,
  ]), "No entries.");
}

Promise.all([options(), usage(), forecast(), modelPerformance(), calls(""), recommendations(), alerts(), credits()])
  .then(() => document.body.setAttribute("data-loaded", "true"))
  .catch((error) => pages.status(`Could not load everything: ${error.message}`));
