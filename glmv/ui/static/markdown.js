/* Safe markdown-ish rendering of model text for the glmv chat page.
 *
 * Safety rule: the whole text is HTML-escaped FIRST; only then are a few tags of our own added around escaped
 * pieces (paragraphs, headings, lists, quotes, code, bold/italic, http(s) links, grounding boxes). No character of
 * model text ever reaches innerHTML unescaped, so a model that writes <script> or <img onerror> shows it as text.
 */
(function () {
  "use strict";

  function escapeHtml(text) {
    return String(text)
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&#39;");
  }

  // Inline rules, applied to already-escaped text of one block.
  function inline(escaped) {
    const codes = [];
    let s = escaped.replace(/`([^`\n]+)`/g, function (_, code) {
      codes.push(code);
      return "\u0000" + (codes.length - 1) + "\u0000";
    });
    // GLM-4.1V grounding: <|begin_of_box|>[x1,y1,x2,y2]<|end_of_box|> (coordinates 0-1000) stays readable, marked.
    s = s.replace(/&lt;\|begin_of_box\|&gt;([\s\S]*?)&lt;\|end_of_box\|&gt;/g,
      '<span class="box" title="grounding box (coordinates 0-1000)">$1</span>');
    s = s.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>");
    s = s.replace(/(^|[^*\w])\*([^*\s][^*\n]*)\*(?![\w*])/g, "$1<em>$2</em>");
    s = s.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s()<>]+)\)/g,
      '<a href="$2" target="_blank" rel="noopener noreferrer nofollow">$1</a>');
    return s.replace(/\u0000(\d+)\u0000/g, function (_, i) { return "<code>" + codes[Number(i)] + "</code>"; });
  }

  function render(text) {
    const lines = escapeHtml(String(text).replace(/\u0000/g, "").replace(/\r\n?/g, "\n")).split("\n");
    const html = [];
    let para = [];
    let list = null;
    let fence = null;

    function flushPara() {
      if (para.length) html.push("<p>" + inline(para.join("\n")).replace(/\n/g, "<br>") + "</p>");
      para = [];
    }
    function flushList() {
      if (!list) return;
      const start = list.tag === "ol" && list.start !== 1 ? ' start="' + list.start + '"' : "";
      html.push("<" + list.tag + start + ">" + list.items.map(function (item) {
        return "<li>" + inline(item) + "</li>";
      }).join("") + "</" + list.tag + ">");
      list = null;
    }
    function flushAll() { flushPara(); flushList(); }

    for (const line of lines) {
      let m;
      if (fence !== null) {
        if (/^\s*```\s*$/.test(line)) {
          html.push("<pre><code>" + fence.join("\n") + "</code></pre>");
          fence = null;
        } else {
          fence.push(line);
        }
        continue;
      }
      if (/^\s*```/.test(line)) { flushAll(); fence = []; continue; }
      if ((m = /^(#{1,6})\s+(.*)$/.exec(line))) {
        flushAll();
        const level = Math.min(m[1].length + 2, 6); // keep headings below the page's own
        html.push("<h" + level + ">" + inline(m[2]) + "</h" + level + ">");
        continue;
      }
      if ((m = /^\s*[-*+]\s+(.*)$/.exec(line))) {
        flushPara();
        if (!list || list.tag !== "ul") { flushList(); list = { tag: "ul", items: [] }; }
        list.items.push(m[1]);
        continue;
      }
      if ((m = /^\s*(\d{1,9})[.)]\s+(.*)$/.exec(line))) {
        flushPara();
        if (!list || list.tag !== "ol") { flushList(); list = { tag: "ol", start: Number(m[1]), items: [] }; }
        list.items.push(m[2]);
        continue;
      }
      if ((m = /^&gt;\s?(.*)$/.exec(line))) { flushAll(); html.push("<blockquote>" + inline(m[1]) + "</blockquote>"); continue; }
      if (/^\s*$/.test(line)) { flushAll(); continue; }
      if (list && /^\s{2,}\S/.test(line)) { list.items[list.items.length - 1] += " " + line.trim(); continue; }
      flushList();
      para.push(line);
    }
    if (fence !== null) html.push("<pre><code>" + fence.join("\n") + "</code></pre>"); // still streaming
    flushAll();
    return html.join("");
  }

  window.glmvMarkdown = { render: render, escapeHtml: escapeHtml };
})();
