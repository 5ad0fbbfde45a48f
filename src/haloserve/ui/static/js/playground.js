// The playground: a streamed chat with the served model(s). The conversation stays in this tab
// (memory and sessionStorage); the stop button aborts the fetch, and the server frees the slot.
import { call, el, errorText, keys } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { sseEvents } from "./sse.js";
import { fmt } from "./chart.js";

const $ = (id) => document.getElementById(id);
const SAVED = "halo.chat";

export class Playground {
  constructor() {
    this.messages = JSON.parse(window.sessionStorage.getItem(SAVED) || "[]");
    this.controller = null;
    this.loaded = false;
    $("pg-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    $("pg-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        this.send();
      }
    });
    $("pg-stop").addEventListener("click", () => this.stop());
    $("pg-clear").addEventListener("click", () => this.clear());
    $("pg-json").addEventListener("change", () => ($("pg-schema").hidden = !$("pg-json").checked));
    $("pg-tools").addEventListener("change", () => ($("pg-tools-json").hidden = !$("pg-tools").checked));
    for (const m of this.messages) this.bubble(m.role, m.content, m.stats);
  }

  show() {
    if (!this.loaded) this.loadModels();
    $("pg-input").focus();
  }

  async loadModels() {
    const select = $("pg-model");
    try {
      const body = await call("/v1/models");
      const current = select.value;
      select.replaceChildren();
      for (const m of body.data || []) {
        const state = m.status && m.status.value ? ` (${m.status.value})` : "";
        const opt = el("option", m.id + state);
        opt.value = m.id;
        select.append(opt);
      }
      if (current) select.value = current;
      this.loaded = true;
      this.error("");
    } catch (e) {
      this.error(`models: ${e.message}` + (e.status === 401 ? " (paste the API key above)" : ""));
    }
  }

  error(text) {
    $("pg-error").textContent = text;
  }

  save() {
    window.sessionStorage.setItem(SAVED, JSON.stringify(this.messages));
  }

  clear() {
    this.stop();
    this.messages = [];
    this.save();
    $("pg-log").replaceChildren();
  }

  bubble(role, content, stats) {
    const box = el("div", null, "msg " + role);
    box.append(el("div", role, "role"));
    const body = el("div", null, "body");
    if (role === "assistant") body.append(renderMarkdown(content || ""));
    else body.textContent = content;
    box.append(body);
    const meta = el("div", stats || "", "meta");
    box.append(meta);
    $("pg-log").append(box);
    box.scrollIntoView({ block: "end" });
    return { box, body, meta };
  }

  request() {
    const system = $("pg-system").value.trim();
    const body = {
      model: $("pg-model").value || "",
      messages: [...(system ? [{ role: "system", content: system }] : []), ...this.messages.map(({ role, content }) => ({ role, content }))],
      stream: true,
      stream_options: { include_usage: true },
    };
    const num = (id, key, int) => {
      const v = $(id).value.trim();
      if (v !== "") body[key] = int ? parseInt(v, 10) : Number(v);
    };
    num("pg-temp", "temperature");
    num("pg-top-p", "top_p");
    num("pg-max", "max_tokens", true);
    if ($("pg-json").checked) {
      body.response_format = { type: "json_schema", json_schema: { name: "playground", schema: JSON.parse($("pg-schema").value) } };
    }
    if ($("pg-tools").checked) body.tools = JSON.parse($("pg-tools-json").value);
    const extra = $("pg-extra").value.trim();
    if (extra) {
      const fields = JSON.parse(extra);
      if (typeof fields !== "object" || Array.isArray(fields) || fields === null) throw new Error("extra fields: a JSON object");
      Object.assign(body, fields); // e.g. top_k, min_p, seed, ignore_eos: the server judges them
    }
    return body;
  }

  async send() {
    const input = $("pg-input");
    const text = input.value.trim();
    if (!text || this.controller) return;
    let body;
    this.messages.push({ role: "user", content: text });
    try {
      body = this.request();
    } catch (e) {
      this.messages.pop();
      this.error(`settings: ${e.message}`);
      return;
    }
    this.error("");
    input.value = "";
    this.bubble("user", text);
    this.save();
    const reply = this.bubble("assistant", "");
    reply.box.dataset.state = "streaming";
    const controller = (this.controller = new AbortController());
    $("pg-send").disabled = true;
    $("pg-stop").disabled = false;
    const started = performance.now();
    let first = 0, chunks = 0, usage = null, content = "", state = "done", drawn = true;
    const tools = [];
    const draw = () => {
      drawn = true;
      const shown = content + (tools.length ? "\n\n```json\n" + JSON.stringify(tools, null, 2) + "\n```" : "");
      reply.body.replaceChildren(renderMarkdown(shown));
      reply.box.scrollIntoView({ block: "end" });
    };
    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...(keys.api ? { Authorization: "Bearer " + keys.api } : {}) },
        body: JSON.stringify(body),
        signal: controller.signal,
        credentials: "omit",
      });
      if (!resp.ok) throw new Error(await errorText(resp));
      for await (const ev of sseEvents(resp)) {
        if (ev.data === "[DONE]") break;
        const chunk = JSON.parse(ev.data);
        if (chunk.error) throw new Error(chunk.error.message || "stream error");
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (!delta) continue;
        const piece = delta.content || "";
        for (const tc of delta.tool_calls || []) {
          const t = (tools[tc.index || 0] ||= { name: "", arguments: "" });
          if (tc.function && tc.function.name) t.name += tc.function.name;
          if (tc.function && tc.function.arguments) t.arguments += tc.function.arguments;
        }
        if (piece || delta.tool_calls) {
          if (!first) first = performance.now();
          chunks++;
          content += piece;
          if (drawn) {
            drawn = false;
            requestAnimationFrame(draw);
          }
        }
      }
    } catch (e) {
      if (e.name === "AbortError") state = "stopped";
      else {
        state = "error";
        this.error(e.message);
      }
    }
    draw();
    const end = performance.now();
    const n = usage ? usage.completion_tokens : chunks;
    const parts = [];
    if (first) parts.push(`TTFT ${fmt((first - started) / 1000)} s`);
    if (first && end > first && n > 1) parts.push(`${fmt((n - 1) / ((end - first) / 1000))} tokens/s`);
    parts.push(`${n} tokens`);
    if (state === "stopped") parts.push("stopped");
    const stats = parts.join(" · ");
    reply.meta.textContent = stats;
    reply.box.dataset.state = state;
    const saved = content || (tools.length ? JSON.stringify(tools) : "");
    if (saved) this.messages.push({ role: "assistant", content: saved, stats });
    else if (state !== "done") this.messages.pop(); // nothing came back: the user may resend
    this.save();
    this.controller = null;
    $("pg-send").disabled = false;
    $("pg-stop").disabled = true;
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  hide() {}
}
