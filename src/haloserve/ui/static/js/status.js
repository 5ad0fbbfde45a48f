// The status page: the server's own /metrics every 2 s (parsed here, so the API does no extra work),
// /v1/models with load/unload where the server supports it, and on a gateway its backends.
import { call, el, fillTable } from "./api.js";
import { TimeChart, fmt } from "./chart.js";
import { histogramMean, parsePrometheus, rate, total } from "./prom.js";

const $ = (id) => document.getElementById(id);
const PERIOD = 2000;

function tile(label, value, hint) {
  const box = el("div", null, "tile");
  box.append(el("div", value, "value"), el("div", label, "label"));
  if (hint) box.title = hint;
  box.dataset.label = label;
  return box;
}

export class Status {
  constructor(kind) {
    this.kind = kind;
    this.prev = null;
    this.timer = null;
    this.charts = [$("st-c1"), $("st-c2"), $("st-c3")].map((c) => new TimeChart(c));
    if (kind === "gateway") {
      $("st-c1-label").textContent = "Requests in flight";
      $("st-c2-label").textContent = "Time to first byte (s)";
      $("st-c3-label").textContent = "Requests/s";
    }
  }

  show() {
    this.tick();
    this.timer = setInterval(() => this.tick(), PERIOD);
  }

  hide() {
    clearInterval(this.timer);
    this.timer = null;
  }

  async tick() {
    try {
      const text = await call("/metrics");
      const now = Date.now();
      const cur = { t: now, m: parsePrometheus(text) };
      if (this.kind === "gateway") this.gatewayTiles(cur, this.prev);
      else this.serveTiles(cur, this.prev);
      this.prev = cur;
      this.error("");
    } catch (e) {
      this.error(`metrics: ${e.message}` + (e.status === 401 ? " (paste the API key above)" : ""));
    }
    try {
      if (this.kind === "gateway") await this.backends();
      await this.models();
    } catch (e) {
      this.error(e.message);
    }
  }

  error(text) {
    $("st-error").textContent = text;
  }

  serveTiles(cur, prev) {
    const m = cur.m;
    const busy = total(m, "halo_slots_busy"), slots = total(m, "halo_slots_total");
    const kv = total(m, "halo_kv_cache_tokens"), cap = total(m, "halo_kv_cache_capacity_tokens");
    const hits = total(m, "halo_prefix_cache_hit_tokens_total") ?? 0;
    const computed = total(m, "halo_prompt_tokens_processed_total") ?? 0;
    const budget = total(m, "halo_models_budget_bytes");
    const many = budget === null ? [] : [ // many models on demand: what is loaded of the budget
      tile("models loaded", `${fmt(total(m, "halo_model_loaded"))} / ${fmt((m.get("halo_model_loaded") || []).length)}`),
      tile("model memory", `${fmt(total(m, "halo_models_used_bytes") / 2 ** 30)} / ${fmt(budget / 2 ** 30)} GiB`),
    ];
    $("st-tiles").replaceChildren(
      ...many,
      tile("slots busy", slots === null ? fmt(busy) : `${fmt(busy)} / ${fmt(slots)}`),
      tile("queue depth", fmt(total(m, "halo_queue_depth"))),
      tile("KV cache", cap ? `${((100 * kv) / cap).toFixed(1)} %` : fmt(kv), `${fmt(kv)} of ${fmt(cap)} tokens`),
      tile("prefix hits", hits + computed ? `${((100 * hits) / (hits + computed)).toFixed(1)} %` : "–", `${fmt(hits)} prompt tokens reused`),
      tile("requests", fmt(total(m, "halo_requests_total"))),
      tile("tokens generated", fmt(total(m, "halo_engine_generated_tokens_total"))),
    );
    if (!prev) return;
    const dt = (cur.t - prev.t) / 1000;
    this.charts[0].push(cur.t, rate(prev.m, m, "halo_engine_generated_tokens_total", dt));
    this.charts[1].push(cur.t, histogramMean(prev.m, m, "halo_time_to_first_token_seconds"));
    this.charts[2].push(cur.t, rate(prev.m, m, "halo_requests_total", dt));
  }

  gatewayTiles(cur, prev) {
    const m = cur.m;
    const inflight = total(m, "halo_gateway_backend_in_flight");
    $("st-tiles").replaceChildren(
      tile("backends healthy", `${fmt(total(m, "halo_gateway_backend_healthy"))} / ${fmt((m.get("halo_gateway_backend_healthy") || []).length)}`),
      tile("in flight", fmt(inflight)),
      tile("queued", fmt(total(m, "halo_gateway_queue_depth") ?? 0)),
      tile("prefix hit ratio", fmt(total(m, "halo_gateway_prefix_hit_ratio"))),
      tile("requests", fmt(total(m, "halo_gateway_requests_total"))),
      tile("retries", fmt(total(m, "halo_gateway_retries_total"))),
    );
    if (!prev) return;
    const dt = (cur.t - prev.t) / 1000;
    this.charts[0].push(cur.t, inflight);
    this.charts[1].push(cur.t, histogramMean(prev.m, m, "halo_gateway_time_to_first_byte_seconds"));
    this.charts[2].push(cur.t, rate(prev.m, m, "halo_gateway_requests_total", dt));
  }

  async models() {
    const body = await call("/v1/models");
    const data = body.data || [];
    // Load/unload only where the server manages models (--models-dir/--models: its /health lists them);
    // a single-model server also gives its one card a status ("loaded") but cannot unload it.
    if (this.managed === undefined && this.kind === "serve") {
      try {
        const health = await call("/health");
        this.managed = !!health.models && typeof health.models === "object" && !Array.isArray(health.models);
      } catch {
        /* loading: ask again next time */
      }
    }
    const managed = !!this.managed && data.some((d) => d.status && d.status.value);
    const rows = data.map((d) => {
      const state = (d.status && d.status.value) || "loaded";
      const cell = el("span", state, "state " + state);
      if (d.status && d.status.error) cell.title = d.status.error;
      const row = [d.id, cell, d.halo && d.halo.memory_bytes ? `${fmt(d.halo.memory_bytes / 2 ** 20)} MiB` : ""];
      if (managed) {
        const act = state === "loaded" ? "unload" : "load";
        const button = el("button", act);
        button.type = "button";
        button.disabled = state === "loading";
        button.addEventListener("click", () => this.manage(act, d.id, button));
        row.push(button);
      }
      return row;
    });
    fillTable($("st-models"), ["model", "state", "memory", ...(managed ? [""] : [])], rows);
  }

  async manage(action, model, button) {
    button.disabled = true;
    try {
      await call(`/models/${action}`, { method: "POST", body: { model } });
    } catch (e) {
      this.error(`${action} ${model}: ${e.message}`);
    }
    await this.models();
  }

  async backends() {
    // /health is open and carries each backend's state, load and models (with their loaded state)
    const list = (await call("/health")).backends || [];
    $("st-backends-box").hidden = false;
    const models = (b) =>
      b.model_states
        ? Object.entries(b.model_states).map(([m, st]) => `${m} (${st})`).join(", ")
        : (b.models || []).join(", ");
    fillTable(
      $("st-backends"),
      ["backend", "health", "circuit", "load", "models", "error"],
      list.map((b) => [
        b.url,
        el("span", b.healthy ? "healthy" : "unhealthy", "state " + (b.healthy ? "loaded" : "failed")),
        b.circuit,
        `${b.in_flight} / ${b.limit || "∞"}`,
        models(b),
        b.error || "",
      ]),
    );
  }
}
