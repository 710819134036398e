// The operators' page: one read of /admin/data, written into cards and tables.
"use strict";

function when(value) {
  return value ? value.slice(0, 19).replace("T", " ") : null;
}

// A duration in seconds as a person reads it: 350 ms, 12.4 s, 3 min 5 s, 2 h 5 min, 1 d 3 h.
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Number(seconds);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  const units = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];
  const parts = [];
  let left = Math.round(s);
  for (const [name, size] of units) {
    if (left >= size && parts.length < 2) {
      parts.push(`${Math.floor(left / size)} ${name}`);
      left %= size;
    } else if (parts.length) break;
  }
  return parts.join(" ");
}

// A form of one action, posted with the session's CSRF token (the page is the
// answer: it says how it went).
function actionForm(name, fields, label) {
  const form = document.createElement("form");
  form.method = "post";
  form.action = `/admin/actions/${name}`;
  form.className = "inline-action";
  const values = { csrf_token: document.body.dataset.csrf, ...fields.hidden };
  for (const [field, value] of Object.entries(values)) {
    const input = form.appendChild(document.createElement("input"));
    Object.assign(input, { type: "hidden", name: field, value: String(value) });
  }
  for (const [field, text] of Object.entries(fields.typed || {})) {
    const input = form.appendChild(document.createElement("input"));
    Object.assign(input, { type: "text", name: field, required: true, placeholder: text });
    input.setAttribute("aria-label", text);
  }
  const button = form.appendChild(document.createElement("button"));
  button.type = "submit";
  button.textContent = label;
  return { node: form };
}

pages.data("/admin/data").then((body) => {
  const status = body.status;
  pages.figure("healthy", status.healthy ? "healthy" : "needs attention");
  pages.figure("manual_reports", pages.count(status.manual_reports.count));
  pages.figure("parked_events", pages.count(body.parked_events.count));
  const lag = body.ingest_lag;
  pages.figure("ingest_lag", lag.sample ? `${duration(lag.p50_seconds)} / ${duration(lag.p99_seconds)}` : "no events");
  pages.figure("last_stored", lag.sample ? `${when(lag.last_stored)} (${duration(lag.seconds_since_last_stored)} ago)` : "never");
  pages.fill("jobs", Object.entries(status.jobs).map(([job, run]) => [
    job, run.period || "never run", run.status, when(run.finished_at), run.last_success_period,
    run.overdue || run.status === "failed" ? { text: "needs attention", cls: "over" }
      : { text: run.due_by && !run.last_success_period ? `not yet due (by ${when(run.due_by)})` : "on time", cls: "ok" },
    run.why,
  ]));
  pages.fill("manual", status.manual_reports.reports.map((r) => [
    r.identifier, r.day, r.reason,
    actionForm("resolve-report", { hidden: { identifier: r.identifier }, typed: { note: "how it was billed" } }, "Mark resolved"),
  ]), "None.");
  pages.fill("unlinked", (body.unlinked_customers || []).map((c) => [
    c.customer_id, c.name, c.email,
    actionForm("link-customer", { hidden: { customer_id: c.customer_id } }, "Retry linking"),
  ]), "None.");
  pages.fill("action-log", body.actions.map((a) => [
    when(a.at), a.operator, a.action, a.target, { text: a.outcome, cls: a.succeeded ? null : "over" },
  ]), "No actions yet.");
  pages.figure("open_differences", pages.count(status.reconciliation.open_differences));
  pages.fill("differences", status.reconciliation.differences.map((d) => [
    d.customer_id, d.day, d.sent, d.in_stripe, when(d.found_at),
  ]), "None.");
  pages.fill("unpriced", body.unpriced_models.map((m) => [m.provider, m.model, pages.count(m.events), m.last_day]), "None.");
  pages.fill("flagged", body.flagged_usage.map((m) => [m.provider, m.model, pages.count(m.events), m.last_day]), "None.");
  pages.fill("unattributed", (body.top_customers.unattributed || []).map((k) => [k.key_hash, pages.count(k.events), k.last_day]), "None.");
  pages.fill("parked", body.parked_events.latest.map((p) => [p.event_id, p.field, p.reason, when(p.parked_at)]), "None.");
  pages.fill("top", body.top_customers.customers.map((c) => [c.customer_id, c.name, pages.amount(c.cost)]), "No usage this month.");
  pages.figure("top_as_of", when(body.top_customers.as_of));
  const flower = document.getElementById("flower");
  if (/^https?:\/\//.test(body.flower_url)) flower.href = body.flower_url;
  document.body.setAttribute("data-loaded", "true");
}).catch((error) => pages.status(`Could not load the overview: ${error.message}`));
