// A small Markdown renderer that builds DOM nodes: text only ever goes through textContent, so model
// or user text can never become markup (no innerHTML anywhere). Supports what chat replies use:
// paragraphs, headings, fenced code, lists, block quotes, rules, `code`, **bold**, *em*, [links](https://..).

const SAFE_URL = /^(https?:|mailto:)/i;
const INLINE = /`([^`\n]+)`|\*\*([^\n]+?)\*\*|(?<!\w)__([^\n]+?)__(?!\w)|\*([^*\s][^*\n]*?)\*|\[([^\]\n]+)\]\(([^)\s]+)\)/g;

function el(tag, cls) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  return node;
}

// Inline spans of one text into parent.
export function renderInline(text, parent) {
  let last = 0;
  const re = new RegExp(INLINE); // one per call: nested spans recurse
  for (let m; (m = re.exec(text)); ) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    if (m[1] !== undefined) {
      const code = el("code");
      code.textContent = m[1];
      parent.append(code);
    } else if (m[2] !== undefined || m[3] !== undefined) {
      const b = el("strong");
      renderInline(m[2] ?? m[3], b);
      parent.append(b);
    } else if (m[4] !== undefined) {
      const i = el("em");
      renderInline(m[4], i);
      parent.append(i);
    } else if (SAFE_URL.test(m[6])) {
      const a = el("a");
      a.href = m[6];
      a.rel = "noopener noreferrer nofollow";
      a.target = "_blank";
      a.textContent = m[5];
      parent.append(a);
    } else {
      parent.append(document.createTextNode(m[0])); // javascript: and friends stay text
    }
    last = re.lastIndex;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

function paragraph(lines, parent) {
  if (!lines.length) return;
  const p = el("p");
  lines.forEach((line, i) => {
    if (i) p.append(el("br"));
    renderInline(line, p);
  });
  parent.append(p);
}

// Markdown text -> DocumentFragment.
export function renderMarkdown(text) {
  const root = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let para = [];
  let list = null; // {node, ordered}
  const flush = () => {
    paragraph(para, root);
    para = [];
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^\s*(```|~~~)\s*([\w+-]*)\s*$/);
    if (fence) {
      flush();
      const body = [];
      for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) body.push(lines[i]);
      const pre = el("pre");
      const code = el("code");
      if (fence[2]) code.dataset.lang = fence[2];
      code.textContent = body.join("\n");
      pre.append(code);
      root.append(pre);
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      flush();
      const h = el("h" + Math.min(6, heading[1].length + 2));
      renderInline(heading[2], h);
      root.append(h);
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flush();
      root.append(el("hr"));
      continue;
    }
    const quote = line.match(/^>\s?(.*)$/);
    if (quote) {
      paragraph(para, root);
      para = [];
      list = null;
      const bq = el("blockquote");
      renderInline(quote[1], bq);
      root.append(bq);
      continue;
    }
    const item = line.match(/^\s*(?:([-*+])|(\d+)[.)])\s+(.*)$/);
    if (item) {
      paragraph(para, root);
      para = [];
      const ordered = item[2] !== undefined;
      if (!list || list.ordered !== ordered) {
        list = { node: el(ordered ? "ol" : "ul"), ordered };
        if (ordered && item[2] !== "1") list.node.start = Number(item[2]);
        root.append(list.node);
      }
      const li = el("li");
      renderInline(item[3], li);
      list.node.append(li);
      continue;
    }
    if (line.trim() === "") {
      flush();
      continue;
    }
    list = null;
    para.push(line);
  }
  flush();
  return root;
}
