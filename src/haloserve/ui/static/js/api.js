// Calls to the server that served this page. Keys live in memory and this tab's sessionStorage only
// (never localStorage, never a URL): the API key when the user pastes one, the admin key likewise.

const store = window.sessionStorage;

export const keys = {
  get api() {
    return store.getItem("halo.apiKey") || "";
  },
  set api(v) {
    v ? store.setItem("halo.apiKey", v) : store.removeItem("halo.apiKey");
  },
  get admin() {
    return store.getItem("halo.adminKey") || "";
  },
  set admin(v) {
    v ? store.setItem("halo.adminKey", v) : store.removeItem("halo.adminKey");
  },
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// fetch with the right key; JSON bodies in and (for non-stream calls) out; OpenAI errors raised.
export async function call(path, { method = "GET", body, admin = false, signal, raw = false } = {}) {
  const headers = {};
  const key = admin ? keys.admin : keys.api;
  if (key) headers.Authorization = "Bearer " + key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
    credentials: "omit",
  });
  if (!resp.ok) throw new ApiError(resp.status, await errorText(resp));
  if (raw) return resp;
  const type = resp.headers.get("Content-Type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

export async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return `${resp.status}: ${body.error.message || body.error}`;
  } catch {
    /* not JSON */
  }
  return `${resp.status} ${resp.statusText}`;
}

export function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

// Fill a <table> from rows of cells (strings or nodes); header first.
export function fillTable(table, header, rows) {
  table.replaceChildren();
  const head = el("tr");
  for (const h of header) head.append(el("th", h));
  table.append(head);
  for (const row of rows) {
    const tr = el("tr");
    for (const cell of row) {
      const td = el("td");
      if (cell instanceof Node) td.append(cell);
      else td.textContent = cell === null || cell === undefined ? "" : String(cell);
      tr.append(td);
    }
    table.append(tr);
  }
}
