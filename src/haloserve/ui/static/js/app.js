// Entry point: which server this is (halo serve or halo gateway), the views and the API key field.
import { keys } from "./api.js";
import { Playground } from "./playground.js";
import { Status } from "./status.js";
import { Admin } from "./admin.js";

const $ = (id) => document.getElementById(id);

async function serverKind() {
  try {
    const resp = await fetch("/health", { cache: "no-store" });
    const body = await resp.json();
    return Array.isArray(body.backends) ? "gateway" : "serve";
  } catch {
    return "serve";
  }
}

async function main() {
  const kind = await serverKind();
  document.body.dataset.kind = kind;
  $("server-kind").textContent = kind === "gateway" ? "halo gateway" : "halo serve";
  $("nav-admin").hidden = kind !== "gateway";
  const keyInput = $("api-key");
  keyInput.value = keys.api;
  const views = {
    playground: new Playground(),
    status: new Status(kind),
    admin: kind === "gateway" ? new Admin() : null,
  };
  keyInput.addEventListener("change", () => {
    keys.api = keyInput.value.trim();
    views.playground.loadModels();
  });
  let current = null;
  const show = () => {
    let name = location.hash.slice(1);
    if (!views[name]) name = "playground";
    if (current === name) return;
    if (current && views[current].hide) views[current].hide();
    current = name;
    for (const v of Object.keys(views)) $("view-" + v).hidden = v !== name;
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === name);
    views[name].show();
  };
  window.addEventListener("hashchange", show);
  show();
  document.body.dataset.ready = "1";
}

main();
