// Server-sent events, cut incrementally: a read may end anywhere (inside a line, between \r and \n).
// Lines end with \n, \r\n or \r (the SSE spec); an event ends at a blank line.

export class SSEParser {
  constructor() {
    this.buf = "";
    this.data = [];
    this.event = "";
  }

  // Feed text; returns the events completed by it: [{event, data}].
  push(text) {
    this.buf += text;
    const out = [];
    for (;;) {
      const n = this.buf.indexOf("\n");
      const r = this.buf.indexOf("\r");
      let i, skip;
      if (r >= 0 && (n < 0 || r < n)) {
        if (r === this.buf.length - 1) break; // a \n may follow in the next read
        i = r;
        skip = this.buf[r + 1] === "\n" ? 2 : 1;
      } else if (n >= 0) {
        i = n;
        skip = 1;
      } else {
        break;
      }
      const line = this.buf.slice(0, i);
      this.buf = this.buf.slice(i + skip);
      this.line(line, out);
    }
    return out;
  }

  // The stream ended: a trailing \r ends its line; an event without its blank line is dropped (spec).
  end() {
    const out = [];
    if (this.buf.endsWith("\r")) {
      this.line(this.buf.slice(0, -1), out);
      this.buf = "";
    }
    return out;
  }

  line(line, out) {
    if (line === "") {
      if (this.data.length) out.push({ event: this.event || "message", data: this.data.join("\n") });
      this.data = [];
      this.event = "";
      return;
    }
    if (line[0] === ":") return;
    const c = line.indexOf(":");
    const field = c < 0 ? line : line.slice(0, c);
    let value = c < 0 ? "" : line.slice(c + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
  }
}

// Read a fetch Response body as SSE events: for await (const ev of sseEvents(resp)) ...
export async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      yield* parser.push(decoder.decode(value, { stream: true }));
    }
    yield* parser.push(decoder.decode());
    yield* parser.end();
  } finally {
    reader.releaseLock();
  }
}
