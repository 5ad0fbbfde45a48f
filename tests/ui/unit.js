// JS unit tests of the UI's pure modules, run inside headless chromium by tests/ui/test_js_units.py
// (page.evaluate of this function on a page served from /ui, so the imports are the shipped files).
async () => {
  const sse = await import("/ui/js/sse.js");
  const md = await import("/ui/js/markdown.js");
  const prom = await import("/ui/js/prom.js");
  const chart = await import("/ui/js/chart.js");
  const failures = [];
  let passed = 0;
  const eq = (name, got, want) => {
    if (typeof got === "function") {
      try {
        got = got();
      } catch (e) {
        failures.push(`${name}: ${e}`);
        return;
      }
    }
    const g = JSON.stringify(got), w = JSON.stringify(want);
    if (g === w) passed++;
    else failures.push(`${name}: got ${g}, want ${w}`);
  };

  // --- SSE: every split point of a stream gives the same events, with \n, \r\n and \r line ends ---
  const streams = {
    lf: 'data: {"a":1}\n\ndata: x\ndata: y\n\n: comment\nevent: end\ndata: [DONE]\n\n',
    crlf: 'data: {"a":1}\r\n\r\ndata: x\r\ndata: y\r\n\r\n: comment\r\nevent: end\r\ndata: [DONE]\r\n\r\n',
    cr: 'data: {"a":1}\r\rdata: x\rdata: y\r\r: comment\revent: end\rdata: [DONE]\r\r',
  };
  const want = [
    { event: "message", data: '{"a":1}' },
    { event: "message", data: "x\ny" },
    { event: "end", data: "[DONE]" },
  ];
  for (const [name, text] of Object.entries(streams)) {
    for (let cut = 0; cut <= text.length; cut++) {
      const p = new sse.SSEParser();
      const got = [...p.push(text.slice(0, cut)), ...p.push(text.slice(cut)), ...p.end()];
      eq(`sse ${name} cut ${cut}`, got, want);
    }
    const p = new sse.SSEParser(); // one character at a time
    const got = [];
    for (const c of text) got.push(...p.push(c));
    got.push(...p.end());
    eq(`sse ${name} by char`, got, want);
  }
  {
    const p = new sse.SSEParser();
    eq("sse no space after colon", p.push("data:abc\n\n"), [{ event: "message", data: "abc" }]);
    eq("sse unfinished event dropped", [...p.push("data: half"), ...p.end()], []);
    eq("sse field without colon", new sse.SSEParser().push("data\n\n"), [{ event: "message", data: "" }]);
  }
  {
    // sseEvents over a real Response whose body arrives in odd pieces, UTF-8 split inside a character
    const bytes = new TextEncoder().encode('data: {"t":"héllo ✓"}\r\n\r\ndata: [DONE]\n\n');
    const body = new ReadableStream({
      start(c) {
        for (let i = 0; i < bytes.length; i += 3) c.enqueue(bytes.slice(i, i + 3));
        c.close();
      },
    });
    const got = [];
    for await (const ev of sse.sseEvents(new Response(body))) got.push(ev.data);
    eq("sseEvents utf-8 pieces", got, ['{"t":"héllo ✓"}', "[DONE]"]);
  }

  // --- Markdown: structure, and no markup ever made from the text ---
  const html = (text) => {
    const div = document.createElement("div");
    div.append(md.renderMarkdown(text));
    return div;
  };
  {
    const d = html('<script>window.__pwned = 1</script>\n\n<img src=x onerror="window.__pwned = 2">');
    eq("md script is text", d.querySelectorAll("script,img").length, 0);
    eq("md script text kept", d.textContent.includes("<script>window.__pwned = 1</script>"), true);
    eq("md img text kept", d.textContent.includes('<img src=x onerror="window.__pwned = 2">'), true);
  }
  {
    const d = html("[click](javascript:alert(1)) [ok](https://example.com/a) [mail](mailto:a@b.c)");
    const links = [...d.querySelectorAll("a")].map((a) => a.getAttribute("href"));
    eq("md only safe links", links, ["https://example.com/a", "mailto:a@b.c"]);
    eq("md unsafe link stays text", d.textContent.includes("[click](javascript:alert(1))"), true);
    eq("md link rel", d.querySelector("a").rel, "noopener noreferrer nofollow");
  }
  {
    const d = html("# Title\n\nSome **bold** and *em* and `x<y>`.\n\n- one\n- two\n\n3. three\n4. four\n\n```python\nprint('<b>')\n```\n> quoted\n\n---");
    eq("md heading", d.querySelector("h3").textContent, "Title");
    eq("md bold", d.querySelector("strong").textContent, "bold");
    eq("md em", d.querySelector("em").textContent, "em");
    eq("md inline code", d.querySelector("p code").textContent, "x<y>");
    eq("md ul", [...d.querySelectorAll("ul li")].map((li) => li.textContent), ["one", "two"]);
    eq("md ol start", [d.querySelector("ol").start, d.querySelectorAll("ol li").length], [3, 2]);
    eq("md fence", [d.querySelector("pre code").textContent, d.querySelector("pre code").dataset.lang], ["print('<b>')", "python"]);
    eq("md quote", d.querySelector("blockquote").textContent, "quoted");
    eq("md rule", d.querySelectorAll("hr").length, 1);
    eq("md no b element", d.querySelectorAll("b").length, 0);
  }
  eq("md unclosed fence streams", () => html("```\ncode so far").querySelector("pre").textContent, "code so far");
  eq("md nested inline", () => html("**a *b* c**").querySelector("strong em").textContent, "b");
  eq("md intraword underscores stay", html("x = window.__a + window.__b; snake__case__name").querySelectorAll("strong").length, 0);
  eq("md underscore bold", html("a __b__ c").querySelector("strong")?.textContent, "b");
  eq("md lone star", html("2 * 3 = 6").textContent, "2 * 3 = 6");
  eq("md paragraphs and breaks", [html("a\nb\n\nc").querySelectorAll("p").length, html("a\nb").querySelectorAll("br").length], [2, 1]);

  // --- Prometheus text ---
  const text = [
    "# HELP halo_requests_total Finished HTTP requests.",
    "# TYPE halo_requests_total counter",
    'halo_requests_total{endpoint="chat",status="200"} 5.0',
    'halo_requests_total{endpoint="chat",status="499"} 2.0',
    'weird{path="a\\"b\\\\c",x="1"} 7 1700000000000',
    'h_bucket{le="+Inf"} 3.0',
    "h_sum 1.5",
    "h_count 3",
    "g NaN",
    "bad{unterminated=\"x} 1",
    "notanumber abc",
  ].join("\n");
  const m = prom.parsePrometheus(text);
  eq("prom sum", prom.total(m, "halo_requests_total"), 7);
  eq("prom filter", prom.total(m, "halo_requests_total", (l) => l.status === "200"), 5);
  eq("prom escaped label", m.get("weird")[0].labels, { path: 'a"b\\c', x: "1" });
  eq("prom timestamp ignored", m.get("weird")[0].value, 7);
  eq("prom +Inf label", m.get("h_bucket")[0].labels.le, "+Inf");
  eq("prom NaN kept", Number.isNaN(m.get("g")[0].value), true);
  eq("prom malformed skipped", [m.has("bad"), m.has("notanumber")], [false, false]);
  eq("prom absent", prom.total(m, "nope"), null);
  const later = prom.parsePrometheus("halo_requests_total 17\nh_sum 3.5\nh_count 5\n");
  eq("prom rate", prom.rate(m, later, "halo_requests_total", 2), 5);
  eq("prom rate after restart", prom.rate(later, m, "halo_requests_total", 2), 0);
  eq("prom histogram mean", prom.histogramMean(m, later, "h"), 1);
  eq("prom histogram no new", prom.histogramMean(m, m, "h"), null);

  eq("chart niceMax", [0, 0.3, 1, 7, 12, 260].map(chart.niceMax), [1, 0.5, 1, 10, 20, 500]);
  eq("chart fmt", [chart.fmt(null), chart.fmt(0), chart.fmt(4), chart.fmt(1.234), chart.fmt(12.34), chart.fmt(1234.5)], ["–", "0", "4", "1.23", "12.3", "1235"]);
  eq("no script ran", window.__pwned, undefined);
  return { passed, failures };
}
