// Prometheus text exposition -> samples, and the few sums the status page needs.

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$/;
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/gy;

function unescape(v) {
  return v.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
}

function number(text) {
  if (text === "+Inf" || text === "Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (text === "NaN") return NaN;
  return Number(text);
}

// Text -> Map(name -> [{labels, value}]); comment lines and malformed lines are skipped.
export function parsePrometheus(text) {
  const out = new Map();
  for (const raw of String(text).split("\n")) {
    const line = raw.trim();
    if (!line || line[0] === "#") continue;
    const m = line.match(SAMPLE);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      LABEL.lastIndex = 0;
      let end = 0;
      for (let l; (l = LABEL.exec(m[3])); ) {
        labels[l[1]] = unescape(l[2]);
        end = LABEL.lastIndex;
      }
      if (end !== m[3].length) continue; // labels that do not parse: skip the sample, never guess
    }
    const value = number(m[4]);
    if (Number.isNaN(value) && m[4] !== "NaN") continue;
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value });
  }
  return out;
}

// Sum of a metric's samples (those matching filter(labels) when given); null when absent.
export function total(samples, name, filter) {
  const list = samples.get(name);
  if (!list) return null;
  let s = 0;
  for (const x of list) if (!filter || filter(x.labels)) s += x.value;
  return s;
}

// Per-second rate and mean of a histogram between two scrapes taken dt seconds apart.
export function rate(prev, cur, name, dt, filter) {
  const a = total(prev, name, filter);
  const b = total(cur, name, filter);
  if (a === null || b === null || dt <= 0) return null;
  return Math.max(0, b - a) / dt; // a restart resets counters: never a negative rate
}

export function histogramMean(prev, cur, name) {
  const ds = (total(cur, name + "_sum") ?? 0) - (total(prev, name + "_sum") ?? 0);
  const dc = (total(cur, name + "_count") ?? 0) - (total(prev, name + "_count") ?? 0);
  return dc > 0 ? ds / dc : null;
}
