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

  // A decimal string rounded half up to cents, with thousands separators, exactly
  // (digits, never a float): "438.76205105875" → "438.76".
  cents(value) {
    const text = String(value);
    const negative = text.startsWith("-");
    const [whole, fraction = ""] = (negative ? text.slice(1) : text).split(".");
    let cents = BigInt((whole || "0") + (fraction + "00").slice(0, 2));
    if ((fraction[2] || "0") >= "5") cents += 1n;
    const digits = cents.toString().padStart(3, "0");
    const units = digits.slice(0, -2).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return `${negative && cents !== 0n ? "-" : ""}${units}.${digits.slice(-2)}`;
  },

  // Money for reading: to the cent ("< $0.01" for less, never a misleading $0.00).
  money(value) {
    if (value === null || value === undefined) return "–";
    const rounded = pages.cents(value);
    if (/^-?0\.00$/.test(rounded) && /[1-9]/.test(String(value))) {
      return String(value).startsWith("-") ? "> -$0.01" : "< $0.01";
    }
    return rounded.startsWith("-") ? "-$" + rounded.slice(1) : "$" + rounded;
  },

  // A money cell: the cents to read, the exact amount on hover and in data-exact.
  amount(value) {
    if (value === null || value === undefined) return null;
    return { text: pages.money(value), exact: String(value) };
  },

  count(value) {
    return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US");
  },

  // The exact amount behind money shown to the cent: on hover, and in data-exact.
  exact(element, value) {
    element.dataset.exact = String(value);
    element.title = `$${pages.decimal(value)} exactly`;
  },

  figure(name, text, exact) {
    for (const element of document.querySelectorAll(`[data-figure="${name}"]`)) {
      element.textContent = text;
      if (exact !== undefined && exact !== null) pages.exact(element, exact);
    }
  },

  // One cell: a value, or {text, exact, list, node, cls}. Each cell is labelled with its
  // column's heading (a phone shows rows as cards) and takes the column's class
  // (num: right-aligned figures).
  cell(row, value, heading) {
    const cell = row.insertCell();
    if (heading) {
      cell.dataset.label = heading.textContent;
      if (heading.className) cell.className = heading.className;
    }
    const shown = value !== null && typeof value === "object" ? value : { text: value };
    if (shown.node) {
      cell.appendChild(shown.node);
    } else if (shown.list) {
      const list = document.createElement("ul");
      for (const item of shown.list) list.appendChild(document.createElement("li")).textContent = item;
      cell.appendChild(list);
    } else {
      cell.textContent = shown.text === null || shown.text === undefined ? "–" : String(shown.text);
    }
    if (shown.exact !== undefined) pages.exact(cell, shown.exact);
    if (shown.cls) cell.classList.add(shown.cls);
    return cell;
  },

  fill(tableId, rows, empty, rowClass) {
    const table = document.getElementById(tableId);
    const headings = [...table.querySelectorAll("thead th")];
    const body = table.querySelector("tbody");
    body.replaceChildren();
    if (rows.length === 0) {
      const cell = body.insertRow().insertCell();
      cell.colSpan = headings.length;
      cell.className = "empty";
      cell.textContent = empty || "Nothing yet.";
      return;
    }
    rows.forEach((values, i) => {
      const row = body.insertRow();
      const extra = rowClass ? rowClass(i) : null;
      if (extra) row.className = extra;
      values.forEach((value, column) => pages.cell(row, value, headings[column]));
    });
  },

  status(message) {
    const element = document.getElementById("status");
    element.textContent = message;
    element.hidden = !message;
  },
};
