// The gateway's admin page: keys (create, list, revoke) and usage, over /admin/* with the admin key.
// A new key's secret is shown once, in this page only, and dropped when the operator clicks Done.
import { call, el, fillTable, keys } from "./api.js";
import { drawBars, fmt } from "./chart.js";

const $ = (id) => document.getElementById(id);

export class Admin {
  constructor() {
    const input = $("admin-key");
    input.value = keys.admin;
    input.addEventListener("change", () => {
      keys.admin = input.value.trim();
      this.refresh();
    });
    $("ad-create").addEventListener("submit", (e) => {
      e.preventDefault();
      this.create();
    });
    $("ad-secret-done").addEventListener("click", () => this.hideSecret());
    $("ad-refresh").addEventListener("click", () => this.usage());
    $("ad-by").addEventListener("change", () => this.usage());
  }

  show() {
    this.refresh();
  }

  hide() {
    this.hideSecret();
  }

  error(text) {
    $("ad-error").textContent = text;
  }

  async refresh() {
    if (!keys.admin) {
      this.error("Paste the admin key (halo gateway --admin-key) to manage keys.");
      return;
    }
    this.error("");
    await this.list();
    await this.usage();
  }

  async guard(what, fn) {
    try {
      return await fn();
    } catch (e) {
      this.error(`${what}: ${e.message}`);
      return null;
    }
  }

  async list() {
    const body = await this.guard("keys", () => call("/admin/keys", { admin: true }));
    if (!body) return;
    const rows = body.data.map((k) => {
      const button = el("button", "revoke");
      button.type = "button";
      button.disabled = !!k.revoked;
      button.addEventListener("click", () => this.revoke(k));
      return [
        k.name,
        k.hint,
        k.rpm || "∞",
        k.tpm || "∞",
        (k.models || []).join(", ") || "all",
        new Date(k.created * 1000).toISOString().slice(0, 16).replace("T", " "),
        k.revoked ? "revoked" : "active",
        button,
      ];
    });
    fillTable($("ad-keys"), ["name", "key", "req/min", "tokens/min", "models", "created (UTC)", "state", ""], rows);
  }

  async create() {
    const models = $("ad-models").value.split(",").map((s) => s.trim()).filter(Boolean);
    const body = {
      name: $("ad-name").value.trim(),
      rpm: parseInt($("ad-rpm").value || "0", 10),
      tpm: parseInt($("ad-tpm").value || "0", 10),
      models,
    };
    const made = await this.guard("create", () => call("/admin/keys", { method: "POST", body, admin: true }));
    if (!made) return;
    this.error("");
    $("ad-secret-value").textContent = made.key;
    $("ad-secret").hidden = false;
    $("ad-name").value = "";
    await this.list();
  }

  hideSecret() {
    $("ad-secret-value").textContent = "";
    $("ad-secret").hidden = true;
  }

  async revoke(k) {
    if (!window.confirm(`Revoke key '${k.name}'? Requests with it get 401 at once.`)) return;
    const ident = String(k.id);
    await this.guard("revoke", () => call(`/admin/keys/${encodeURIComponent(ident)}`, { method: "DELETE", admin: true }));
    await this.list();
  }

  async usage() {
    const by = $("ad-by").value;
    const since = $("ad-since").value;
    const q = new URLSearchParams({ by });
    if (since) q.set("since", since);
    const body = await this.guard("usage", () => call(`/admin/usage?${q}`, { admin: true }));
    if (!body) return;
    const cols = body.by || by.split(",");
    const rows = body.data.map((r) => [
      ...cols.map((c) => r[c]),
      r.requests,
      r.errors,
      r.prompt_tokens,
      r.completion_tokens,
      r.total_tokens,
    ]);
    fillTable($("ad-usage"), [...cols, "requests", "errors", "prompt tokens", "completion tokens", "total tokens"], rows);
    const perDay = await this.guard("usage", () => call(`/admin/usage?by=day${since ? "&since=" + since : ""}`, { admin: true }));
    if (perDay) drawBars($("ad-chart"), perDay.data.map((r) => ({ label: r.day, value: r.total_tokens })));
    $("ad-usage").dataset.rows = String(rows.length);
    $("ad-usage").title = `${fmt(rows.length)} rows`;
  }
}
