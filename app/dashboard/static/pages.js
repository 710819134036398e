// What both pages share: reading their data, and writing it safely (textContent only:
// model names, task types and reasons are user input and never become markup).
"use strict";

const pages = {
  async data(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) {
      window.location.assign(window.location.pathname.startsWith("/admin") ? "/admin/sign-in" : "/dashboard/sign-in");
      throw new Error("signed out");
    }
    const body = await response.json();
    if (!response.ok) {
      throw new Error(body.error ? body.error.message : response.statusText);
    }
    return body;
  },

  // A decimal string as the API wrote it, trailing zeros dropped: no float in between.
  decimal(value) {
    if (value === null || value === undefined) return "–";
    const text = String(value);
    return text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
  },

  money(value) {
    if (value === null || value === undefined) return "–";
    const text = pages.decimal(value);
    return text.startsWith("-") ? "-$" + text.slice(1) : "$" + text;
  },

  count(value) {
    return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US");
  },

  figure(name, text) {
    for (const element of document.querySelectorAll(`[data-figure="${name}"]`)) {
      element.textContent = text;
    }
  },

  fill(tableId, rows, empty) {
    const body = document.querySelector(`#${tableId} tbody`);
    body.replaceChildren();
    if (rows.length === 0) {
      const row = body.insertRow();
      const cell = row.insertCell();
      cell.colSpan = document.querySelectorAll(`#${tableId} thead th`).length;
      cell.className = "empty";
      cell.textContent = empty || "Nothing yet.";
      return;
    }
    for (const values of rows) {
      const row = body.insertRow();
      for (const value of values) {
        row.insertCell().textContent = value === null || value === undefined ? "–" : String(value);
      }
    }
  },

  status(message) {
    const element = document.getElementById("status");
    element.textContent = message;
    element.hidden = !message;
  },
};
