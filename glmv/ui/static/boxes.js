/* Grounding boxes for the chat page: find GLM-4.1V's [[x1,y1,x2,y2]] boxes (0-1000 of the image's width and height)
 * in an answer and draw them, numbered, over the image they refer to. The same reading rule as
 * glmv/reasoning/boxes.py: inside <|begin_of_box|>..<|end_of_box|> any [a,b,c,d]; elsewhere only double-bracket
 * lists ([[a,b,c,d]] or [[a,b,c,d],[e,f,g,h]]), since answers quote plain lists too.
 */
(function () {
  "use strict";

  const NUM = "\\s*(\\d{1,4})\\s*";
  const QUAD = "\\[" + [NUM, NUM, NUM, NUM].join(",") + "\\]";
  const QUAD_NC = QUAD.replace(/\(/g, "(?:");
  const QUAD_LIST = new RegExp("\\[\\s*" + QUAD_NC + "(?:\\s*,\\s*" + QUAD_NC + ")*\\s*\\]", "g");
  const BOXED = /<\|begin_of_box\|>([\s\S]*?)(?:<\|end_of_box\|>|$)/g;

  function quads(text) {
    const out = [];
    const re = new RegExp(QUAD, "g");
    let m;
    while ((m = re.exec(text))) {
      const v = m.slice(1, 5).map(Number);
      if (v.every(function (x) { return x >= 0 && x <= 1000; }) && v[2] > v[0] && v[3] > v[1]) out.push(v);
    }
    return out;
  }

  /** [[x1, y1, x2, y2], ...] in order of appearance. */
  function extract(text) {
    if (text.indexOf("<|begin_of_box|>") >= 0) {
      const out = [];
      let m;
      BOXED.lastIndex = 0;
      while ((m = BOXED.exec(text))) out.push.apply(out, quads(m[1]));
      return out;
    }
    const out = [];
    for (const m of text.match(QUAD_LIST) || []) out.push.apply(out, quads(m));
    return out;
  }

  /** A figure: the image with one numbered outline per box (positions in % so it scales with the image). */
  function figure(imageUrl, boxes, name) {
    const fig = document.createElement("figure");
    fig.className = "grounding";
    const frame = document.createElement("div");
    frame.className = "grounding-frame";
    const img = document.createElement("img");
    img.src = imageUrl;
    img.alt = name || "attached image";
    frame.appendChild(img);
    boxes.forEach(function (b, i) {
      const box = document.createElement("div");
      box.className = "grounding-box";
      box.style.left = b[0] / 10 + "%";
      box.style.top = b[1] / 10 + "%";
      box.style.width = (b[2] - b[0]) / 10 + "%";
      box.style.height = (b[3] - b[1]) / 10 + "%";
      box.title = "box " + (i + 1) + ": [" + b.join(", ") + "]";
      const label = document.createElement("span");
      label.className = "grounding-label";
      label.textContent = String(i + 1);
      box.appendChild(label);
      frame.appendChild(box);
    });
    const caption = document.createElement("figcaption");
    caption.textContent = boxes.length + (boxes.length === 1 ? " box" : " boxes") + " drawn over " +
      (name || "the image") + " (the model's coordinates are 0-1000 of its width and height).";
    fig.append(frame, caption);
    return fig;
  }

  window.glmvBoxes = { extract: extract, figure: figure };
})();
