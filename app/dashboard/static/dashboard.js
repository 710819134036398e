// The customer's page: every figure is read from /dashboard/data/<name>, which answers
// exactly what the API answers, and drawn with Chart.js (served from this app).
"use strict";

const PALETTE = ["#2563eb", "#db2777", "#16a34a", "#ea580c", "#7c3aed", "#0891b2", "#ca8a04", "#64748b"];
const range = document.body.dataset;
const between = `start_date=${range.start}&end_date=${range.end}`;

function chart(id, type, labels, datasets, stacked, yTitle) {
  return new Chart(document.getElementById(id), {
    type,
    data: { labels, datasets },
    options: {
      animation: false,
      responsive: true,
      plugins: { legend: { position: "bottom" } },
      scales: {
        x: { stacked },
        y: { stacked, beginAtZero: true, title: { display: Boolean(yTitle), text: yTitle } },
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

async function usage() {
  const [daily, total] = await Promise.all([
    pages.data(`/dashboard/data/usage?${between}&granularity=day&group_by=model`),
    pages.data(`/dashboard/data/usage?${between}&granularity=total&group_by=provider,model`),
  ]);
  pages.figure("range_cost", pages.money(daily.totals.cost));
  pages.figure("range_tokens", pages.count(daily.totals.tokens_total));
  const labels = days();
  const byDay = new Map(daily.periods.map((period) => [period.period, period]));
  const models = [...new Set(daily.periods.flatMap((period) => period.groups.map((g) => g.model)))].sort();
  chart("spend-chart", "bar", labels, models.map((model, i) => ({
    label: model,
    backgroundColor: PALETTE[i % PALETTE.length],
    data: labels.map((day) => {
      const group = (byDay.get(day)?.groups || []).find((g) => g.model === model);
      return group ? Number(group.cost) : 0;
    }),
  })), true, "USD");
  const sum = (day, field) => (byDay.get(day)?.groups || []).reduce((n, g) => n + g[field], 0);
  chart("tokens-chart", "bar", labels, [
    { label: "input (not cached)", backgroundColor: PALETTE[0], data: labels.map((d) => sum(d, "tokens_input") - sum(d, "tokens_cache_read") - sum(d, "tokens_cache_write")) },
    { label: "cache reads", backgroundColor: PALETTE[5], data: labels.map((d) => sum(d, "tokens_cache_read")) },
    { label: "cache writes", backgroundColor: PALETTE[3], data: labels.map((d) => sum(d, "tokens_cache_write")) },
    { label: "output", backgroundColor: PALETTE[1], data: labels.map((d) => sum(d, "tokens_output")) },
  ], true, "tokens");
  const groups = total.periods.length ? total.periods[0].groups : [];
  groups.sort((a, b) => Number(b.cost) - Number(a.cost));
  pages.fill("breakdown", groups.map((g) => [
    g.provider, g.model, pages.count(g.events), pages.count(g.tokens_input),
    pages.count(g.tokens_cache_read), pages.count(g.tokens_cache_write),
    pages.count(g.tokens_input_audio), pages.count(g.tokens_output),
    pages.count(g.tokens_output_reasoning), pages.count(g.tokens_output_audio), pages.money(g.cost),
  ]), "No usage in this range.");
}

async function forecast() {
  const body = await pages.data("/dashboard/data/forecast");
  pages.figure("month_to_date", pages.money(body.cost.month_to_date));
  pages.figure("projected_month", pages.money(body.cost.projected_month));
  const change = body.cost.change_percent;
  pages.figure("change_percent", change === null ? "no usage then" : `${change > 0 ? "+" : ""}${change}%`);
  pages.figure("method", `Projection: ${body.method}.`);
  pages.fill("budgets", body.budgets.map((b) => [
    `${b.metric === "usd" ? "USD" : "tokens"} per ${b.period.replace("_", " ")}${b.api_key_id ? ` (key ${b.api_key_id})` : ""}`,
    b.period_end.slice(0, 10),
    b.metric === "usd" ? pages.money(b.effective_limit) : pages.count(b.effective_limit),
    b.metric === "usd" ? pages.money(b.spent) : pages.count(b.spent),
    b.metric === "usd" ? pages.money(b.projected) : pages.count(b.projected),
    b.projected_percent === null ? null : `${b.projected_percent}%${b.projected_over ? " (over)" : ""}`,
  ]), "No budgets set.");
}

async function performance() {
  const body = await pages.data(`/dashboard/data/performance?${between}`);
  const models = body.models.filter((m) => m.timed_calls > 0);
  chart("latency-chart", "bar", models.map((m) => m.model), ["p50", "p95", "p99"].map((q, i) => ({
    label: q,
    backgroundColor: PALETTE[i],
    data: models.map((m) => m.latency_seconds[q]),
  })), false, "seconds");
  pages.fill("performance", body.models.map((m) => [
    m.provider, m.model, pages.count(m.calls),
    m.error_rate === null ? null : `${(m.error_rate * 100).toFixed(2)}%`,
    m.latency_seconds.p50, m.latency_seconds.p95, m.latency_seconds.p99, m.output_tokens_per_second,
  ]), "No calls in this range.");
}

async function recommendations() {
  const body = await pages.data(`/dashboard/data/recommendations?days=${range.days}`);
  document.getElementById("recommendations-note").textContent = body.note;
  const rows = body.models.flatMap((m) => (m.cheaper_models.length ? m.cheaper_models : [null]).map((c) => [
    m.model, pages.money(m.cost_at_today_prices),
    c ? `${c.model} (${c.provider})` : "none cheaper", c ? pages.money(c.cost) : null, c ? pages.money(c.saving) : null,
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
  pages.figure("credit_balance", pages.money(c.balance));
  pages.figure("credit_overage", c.overage === "block" ? "calls are refused" : "billed as usage");
  const r = c.auto_recharge;
  pages.figure("credit_recharge", r.threshold === null ? "off"
    : `${pages.money(r.amount)} below ${pages.money(r.threshold)}${r.paused ? " (paused: payments failed)" : ""}`);
  pages.figure("credit_uncovered", pages.money(c.uncovered));
  pages.fill("credit-grants", c.grants.map((g) => [
    when(g.effective_at), g.category, pages.money(g.amount), pages.money(g.remaining), g.priority,
    when(g.expires_at) || "never", g.closed_at ? "closed" : "open",
  ]), "No grants.");
  pages.fill("credit-ledger", c.entries.map((e) => [
    when(e.at), e.kind, pages.money(e.amount), e.grant_id, e.note,
  ]), "No entries.");
}

Promise.all([usage(), forecast(), performance(), recommendations(), alerts(), credits()])
  .then(() => document.body.setAttribute("data-loaded", "true"))
  .catch((error) => pages.status(`Could not load everything: ${error.message}`));
