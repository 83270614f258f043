/* glmv chat page: a client of this server's own OpenAI-compatible API.
 *
 * - /v1/models fills the model picker; /v1/chat/completions is called with stream: true and read with
 *   fetch + ReadableStream, parsing Server-Sent Events by hand (EventSource cannot POST).
 * - reasoning_content deltas go to a collapsible "Thinking" block, content deltas to the answer.
 * - The conversation lives in memory only; assistant turns are sent back with the answer alone (no thinking),
 *   as GLM-4.1V expects. Attachments travel as data: URIs in image_url / video_url / file parts.
 */
(function () {
  "use strict";

  const BASE = document.documentElement.dataset.base || "/";
  const md = window.glmvMarkdown;
  const $ = function (id) { return document.getElementById(id); };
  const els = {
    model: $("model"), messages: $("messages"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
    attach: $("attach"), fileInput: $("file-input"), attachments: $("attachments"), status: $("status"),
    settings: $("settings"), settingsToggle: $("settings-toggle"), newChat: $("new-chat"), overlay: $("drop-overlay"),
    temperature: $("temperature"), maxTokens: $("max-tokens"), budget: $("thinking-budget"),
    system: $("system-prompt"), apiKey: $("api-key"), extra: $("extra-body"), emptyHint: $("empty-hint"),
  };

  const IMAGE_EXT = { jpg: "image/jpeg", jpeg: "image/jpeg", png: "image/png", gif: "image/gif", bmp: "image/bmp",
    tif: "image/tiff", tiff: "image/tiff", webp: "image/webp" };
  const VIDEO_EXT = { mp4: "video/mp4", avi: "video/x-msvideo", mkv: "video/x-matroska", mov: "video/quicktime",
    wmv: "video/x-ms-wmv", flv: "video/x-flv", webm: "video/webm", mpeg: "video/mpeg", mpg: "video/mpeg",
    m4v: "video/x-m4v" };
  const DOC_EXT = { pdf: "application/pdf", ppt: "application/vnd.ms-powerpoint",
    pptx: "application/vnd.openxmlformats-officedocument.presentationml.presentation" };

  const state = {
    history: [], // {role: "user", text, attachments} | {role: "assistant", answer}
    pending: [], // attachments waiting for the next message: {kind, name, mime, size, dataUrl}
    controller: null,
    busy: false,
  };

  // ---------------------------------------------------------------- settings

  const SETTINGS_KEY = "glmv.settings";
  const KEY_KEY = "glmv.apiKey";
  const SETTING_FIELDS = { temperature: els.temperature, maxTokens: els.maxTokens, budget: els.budget,
    system: els.system, extra: els.extra };

  function loadSettings() {
    let saved = {};
    try { saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}"); } catch (e) { saved = {}; }
    for (const [name, input] of Object.entries(SETTING_FIELDS)) if (typeof saved[name] === "string") input.value = saved[name];
    try { els.apiKey.value = sessionStorage.getItem(KEY_KEY) || ""; } catch (e) { /* storage off */ }
  }

  function saveSettings() {
    const values = {};
    for (const [name, input] of Object.entries(SETTING_FIELDS)) values[name] = input.value;
    try {
      localStorage.setItem(SETTINGS_KEY, JSON.stringify(values));
      sessionStorage.setItem(KEY_KEY, els.apiKey.value);
    } catch (e) { /* storage off: settings last for this page only */ }
  }

  function toggleSettings(open) {
    const show = open === undefined ? els.settings.hidden : open;
    els.settings.hidden = !show;
    els.settingsToggle.setAttribute("aria-expanded", String(show));
  }

  function numberSetting(input, name, min, integer) {
    const raw = input.value.trim();
    if (raw === "") return undefined;
    const value = Number(raw);
    if (!Number.isFinite(value) || value < min || (integer && !Number.isInteger(value))) {
      throw new Error(name + " must be " + (integer ? "a whole number" : "a number") + " of at least " + min + ".");
    }
    return value;
  }

  function extraFields() {
    const raw = els.extra.value.trim();
    if (!raw) return {};
    let value;
    try { value = JSON.parse(raw); } catch (e) { throw new Error("Extra request fields: not valid JSON (" + e.message + ")."); }
    if (!value || typeof value !== "object" || Array.isArray(value)) {
      throw new Error('Extra request fields must be a JSON object such as {"top_p": 0.6}.');
    }
    return value;
  }

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const key = els.apiKey.value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  // ---------------------------------------------------------------- status and errors

  function setStatus(text, kind) {
    els.status.textContent = text || "";
    els.status.className = "status" + (kind ? " " + kind : "");
  }

  /** A readable sentence from a failed HTTP response (OpenAI error shape, FastAPI detail, or plain text). */
  async function readError(resp) {
    let message = "";
    const text = await resp.text().catch(function () { return ""; });
    try {
      const body = JSON.parse(text);
      if (body && body.error) message = typeof body.error === "string" ? body.error : body.error.message;
      else if (body && body.detail) message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) { message = text.slice(0, 500); }
    const hints = {
      401: " Set the server's API key in Settings.",
      413: " The request is too large: send smaller or fewer files.",
      429: " The server is busy; try again shortly.",
      503: " The server is busy; try again shortly.",
    };
    return "Error " + resp.status + (resp.statusText ? " " + resp.statusText : "") + ": " +
      (message || "no details") + (hints[resp.status] && !/api key/i.test(message) ? hints[resp.status] : "");
  }

  // ---------------------------------------------------------------- models

  async function loadModels() {
    try {
      const resp = await fetch(BASE + "v1/models", { headers: headers(false) });
      if (!resp.ok) {
        setStatus(await readError(resp), "error");
        if (resp.status === 401) toggleSettings(true);
        return;
      }
      const body = await resp.json();
      const previous = els.model.value;
      const cards = body.data || [];
      els.model.replaceChildren.apply(els.model, cards.map(function (card) { return new Option(card.id, card.id); }));
      if (cards.some(function (c) { return c.id === previous; })) els.model.value = previous;
      const card = cards.find(function (c) { return c.id === els.model.value; });
      setStatus(card ? "Ready: " + card.id + (card.max_model_len ? " (context " + card.max_model_len + " tokens)" : "") : "The server lists no model.", card ? "" : "error");
    } catch (e) {
      setStatus("Cannot reach the server (" + e.message + "). Is glmv serve running?", "error");
    }
  }

  // ---------------------------------------------------------------- attachments

  function extension(name) {
    const dot = name.lastIndexOf(".");
    return dot < 0 ? "" : name.slice(dot + 1).toLowerCase();
  }

  /** kind ("image" | "video" | "file") and MIME type of a picked file, or null if glmv cannot read it. */
  function classify(file) {
    const ext = extension(file.name);
    const type = (file.type || "").toLowerCase();
    if (DOC_EXT[ext]) return { kind: "file", mime: DOC_EXT[ext] };
    if (type === "application/pdf") return { kind: "file", mime: type };
    if (type.startsWith("image/") || IMAGE_EXT[ext]) return { kind: "image", mime: type.startsWith("image/") ? type : IMAGE_EXT[ext] };
    if (type.startsWith("video/") || VIDEO_EXT[ext]) return { kind: "video", mime: type.startsWith("video/") ? type : VIDEO_EXT[ext] };
    return null;
  }

  function readAsDataUrl(file, mime) {
    return new Promise(function (resolve, reject) {
      const reader = new FileReader();
      reader.onload = function () {
        const url = String(reader.result);
        const comma = url.indexOf(",");
        resolve("data:" + mime + ";base64," + url.slice(comma + 1)); // the browser may not know the type
      };
      reader.onerror = function () { reject(reader.error || new Error("could not read the file")); };
      reader.readAsDataURL(file);
    });
  }

  async function addFiles(fileList) {
    const skipped = [];
    for (const file of Array.from(fileList || [])) {
      const found = classify(file);
      if (!found) { skipped.push(file.name); continue; }
      try {
        const dataUrl = await readAsDataUrl(file, found.mime);
        state.pending.push({ kind: found.kind, name: file.name, mime: found.mime, size: file.size, dataUrl: dataUrl });
      } catch (e) {
        skipped.push(file.name + " (" + e.message + ")");
      }
    }
    renderPending();
    if (skipped.length) {
      setStatus("Skipped " + skipped.join(", ") + ": attach images, a video or a document (PDF, PPT, PPTX).", "error");
    }
  }

  function formatSize(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(0) + " KB";
    return (bytes / 1024 / 1024).toFixed(1) + " MB";
  }

  function attachmentChip(item, onRemove) {
    const chip = document.createElement("div");
    chip.className = "chip chip-" + item.kind;
    chip.title = item.name + " (" + formatSize(item.size) + ")";
    if (item.kind === "image") {
      const img = document.createElement("img");
      img.src = item.dataUrl;
      img.alt = item.name;
      chip.appendChild(img);
    } else {
      const badge = document.createElement("span"); // a text badge: no emoji font needed
      badge.className = "chip-badge";
      badge.textContent = (extension(item.name) || item.kind).slice(0, 4).toUpperCase();
      chip.appendChild(badge);
    }
    const label = document.createElement("span");
    label.className = "chip-name";
    label.textContent = item.name;
    chip.appendChild(label);
    if (onRemove) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "chip-remove";
      remove.title = "Remove " + item.name;
      remove.textContent = "\u00D7";
      remove.addEventListener("click", onRemove);
      chip.appendChild(remove);
    }
    return chip;
  }

  function renderPending() {
    els.attachments.replaceChildren.apply(els.attachments, state.pending.map(function (item, i) {
      return attachmentChip(item, function () { state.pending.splice(i, 1); renderPending(); });
    }));
  }

  // ---------------------------------------------------------------- the conversation as API messages

  function mediaPart(item) {
    if (item.kind === "image") return { type: "image_url", image_url: { url: item.dataUrl } };
    if (item.kind === "video") return { type: "video_url", video_url: { url: item.dataUrl } };
    return { type: "file", file: { file_data: item.dataUrl, filename: item.name } };
  }

  function apiMessages() {
    const messages = [];
    const system = els.system.value.trim();
    if (system) messages.push({ role: "system", content: system });
    for (const turn of state.history) {
      if (turn.role === "assistant") {
        messages.push({ role: "assistant", content: turn.answer }); // the answer only: never the thinking
      } else if (!turn.attachments.length) {
        messages.push({ role: "user", content: turn.text });
      } else {
        const parts = turn.attachments.map(mediaPart);
        if (turn.text) parts.push({ type: "text", text: turn.text });
        messages.push({ role: "user", content: parts });
      }
    }
    return messages;
  }

  function requestBody() {
    const body = { model: els.model.value || undefined, messages: apiMessages(), stream: true,
      stream_options: { include_usage: true } };
    const temperature = numberSetting(els.temperature, "Temperature", 0, false);
    const maxTokens = numberSetting(els.maxTokens, "Max tokens", 1, true);
    const budget = numberSetting(els.budget, "Thinking budget", 0, true);
    if (temperature !== undefined) body.temperature = temperature;
    if (maxTokens !== undefined) body.max_tokens = maxTokens;
    if (budget !== undefined) body.thinking_budget = budget;
    const extra = extraFields();
    for (const key of Object.keys(extra)) if (key !== "messages" && key !== "stream") body[key] = extra[key];
    return body;
  }

  // ---------------------------------------------------------------- rendering messages

  function nearBottom() {
    const m = els.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  function append(node) {
    const stick = nearBottom();
    els.emptyHint.hidden = true;
    els.messages.appendChild(node);
    if (stick) els.messages.scrollTop = els.messages.scrollHeight;
  }

  function renderUser(turn) {
    const root = document.createElement("div");
    root.className = "msg user";
    if (turn.attachments.length) {
      const row = document.createElement("div");
      row.className = "msg-attachments";
      for (const item of turn.attachments) row.appendChild(attachmentChip(item, null));
      root.appendChild(row);
    }
    if (turn.text) {
      const text = document.createElement("div");
      text.className = "user-text";
      text.textContent = turn.text;
      root.appendChild(text);
    }
    append(root);
    return root;
  }

  /** The assistant bubble: a Thinking block (shown once reasoning arrives), the answer, a meta line, errors. */
  function renderAssistant() {
    const root = document.createElement("div");
    root.className = "msg assistant";
    root.dataset.state = "waiting";
    const thinking = document.createElement("details");
    thinking.className = "thinking";
    thinking.hidden = true;
    thinking.open = true;
    const summary = document.createElement("summary");
    summary.textContent = "Thinking\u2026";
    const thinkingBody = document.createElement("div");
    thinkingBody.className = "thinking-body";
    thinking.append(summary, thinkingBody);
    const answer = document.createElement("div");
    answer.className = "answer";
    const pending = document.createElement("div");
    pending.className = "typing";
    pending.textContent = "\u2026";
    answer.appendChild(pending);
    const note = document.createElement("div");
    note.className = "note";
    note.hidden = true;
    const meta = document.createElement("div");
    meta.className = "meta";
    root.append(thinking, answer, note, meta);
    append(root);

    let userToggled = false;
    summary.addEventListener("click", function () { userToggled = true; });
    const started = performance.now();
    let answerStarted = null;
    let frame = 0;
    let latest = { reasoning: "", answer: "" };

    function paint() {
      frame = 0;
      const stick = nearBottom();
      if (latest.reasoning) {
        thinking.hidden = false;
        thinkingBody.textContent = latest.reasoning; // plain text: never parsed as HTML
      }
      if (latest.answer) {
        if (answerStarted === null) {
          answerStarted = performance.now();
          if (latest.reasoning) {
            summary.textContent = "Thinking (" + ((answerStarted - started) / 1000).toFixed(1) + " s)";
            if (!userToggled) thinking.open = false;
          }
        }
        answer.innerHTML = md.render(latest.answer); // escaped first by the renderer
      }
      if (stick) els.messages.scrollTop = els.messages.scrollHeight;
    }

    return {
      root: root,
      update: function (reasoning, answerText) {
        latest = { reasoning: reasoning, answer: answerText };
        root.dataset.state = "streaming";
        if (!frame) frame = requestAnimationFrame(paint);
      },
      finish: function (result) {
        if (frame) cancelAnimationFrame(frame);
        latest = { reasoning: result.reasoning, answer: result.answer };
        paint();
        pending.remove();
        if (!result.answer) answer.replaceChildren();
        if (result.reasoning && answerStarted === null) {
          summary.textContent = "Thinking (" + ((performance.now() - started) / 1000).toFixed(1) + " s)";
        }
        const notes = [];
        if (result.stopped) notes.push("Stopped.");
        if (!result.error && !result.stopped && result.finish === "length") {
          notes.push(result.answer
            ? "The answer was cut off at the token limit (finish_reason: length). Raise Max tokens in Settings."
            : "The model ran out of tokens while thinking (finish_reason: length). Raise Max tokens or set a " +
              "Thinking budget in Settings.");
        }
        if (!result.error && !result.stopped && !result.finish && !result.answer && !result.reasoning) {
          notes.push("The server closed the stream without an answer.");
        }
        if (notes.length) { note.hidden = false; note.textContent = notes.join(" "); }
        if (result.error) {
          const err = document.createElement("div");
          err.className = "error";
          err.textContent = result.error;
          root.insertBefore(err, meta);
        }
        const parts = [];
        if (result.usage) parts.push(result.usage.completion_tokens + " tokens");
        const seconds = (performance.now() - started) / 1000;
        if (result.usage && result.usage.completion_tokens && seconds > 0) {
          parts.push((result.usage.completion_tokens / seconds).toFixed(1) + " tok/s");
        }
        parts.push(seconds.toFixed(1) + " s");
        if (result.finish) parts.push("finish: " + result.finish);
        meta.textContent = parts.join(" \u00B7 ");
        root.dataset.state = result.error ? "error" : result.stopped ? "stopped" : "done";
      },
    };
  }

  // ---------------------------------------------------------------- streaming

  /** Reads an SSE body, calling onData(payload string) per event; returns when the stream or [DONE] ends. */
  async function readSse(resp, onData) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      let boundary;
      while ((boundary = /\r?\n\r?\n/.exec(buffer))) {
        const event = buffer.slice(0, boundary.index);
        buffer = buffer.slice(boundary.index + boundary[0].length);
        const data = event.split(/\r?\n/).filter(function (line) { return line.startsWith("data:"); })
          .map(function (line) { return line.slice(5).replace(/^ /, ""); }).join("\n");
        if (!data) continue; // comments and keep-alives
        if (data === "[DONE]") { reader.cancel().catch(function () {}); return; }
        onData(data);
      }
    }
  }

  class StreamError extends Error {}

  async function send() {
    if (state.busy) return;
    const text = els.prompt.value.trim();
    if (!text && !state.pending.length) return;
    const turn = { role: "user", text: text, attachments: state.pending };
    state.history.push(turn);
    let body;
    try {
      body = requestBody();
    } catch (e) {
      state.history.pop();
      setStatus(e.message, "error");
      toggleSettings(true);
      return;
    }
    state.pending = [];
    renderPending();
    els.prompt.value = "";
    autosize();
    const userView = renderUser(turn);
    const view = renderAssistant();
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    setStatus("Generating\u2026");

    const result = { reasoning: "", answer: "", finish: null, usage: null, error: null, stopped: false };
    let notSent = false;
    try {
      const resp = await fetch(BASE + "v1/chat/completions", {
        method: "POST", headers: headers(true), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!resp.ok) {
        result.error = await readError(resp);
        notSent = true;
      } else {
        await readSse(resp, function (data) {
          let chunk;
          try { chunk = JSON.parse(data); } catch (e) { return; }
          if (chunk.error) throw new StreamError(chunk.error.message || JSON.stringify(chunk.error));
          if (chunk.usage) result.usage = chunk.usage;
          for (const choice of chunk.choices || []) {
            if (choice.index) continue; // the page asks for one choice
            const delta = choice.delta || {};
            const reasoning = delta.reasoning_content != null ? delta.reasoning_content : delta.reasoning;
            if (reasoning) result.reasoning += reasoning;
            if (delta.content) result.answer += delta.content;
            if (choice.finish_reason) result.finish = choice.finish_reason;
          }
          view.update(result.reasoning, result.answer);
        });
      }
    } catch (e) {
      if (e.name === "AbortError") result.stopped = true;
      else if (e instanceof StreamError) result.error = "The server reported an error: " + e.message;
      else result.error = "Connection failed: " + e.message + ". Is the server still running?";
    }
    state.controller = null;
    result.reasoning = result.reasoning.trim();
    result.answer = result.answer.trim();
    view.finish(result);
    if (notSent) {
      // Nothing was generated: take the turn back and put the message into the composer to fix and resend.
      state.history.pop();
      userView.classList.add("not-sent");
      if (!els.prompt.value && !state.pending.length) {
        els.prompt.value = turn.text;
        state.pending = turn.attachments;
        renderPending();
        autosize();
      }
      setStatus("Not sent: fix the message or the settings and send again.", "error");
    } else {
      state.history.push({ role: "assistant", answer: result.answer });
      setStatus(result.error ? "The answer ended with an error." : result.stopped ? "Stopped." : "");
    }
    setBusy(false);
  }

  function setBusy(busy) {
    state.busy = busy;
    els.send.hidden = busy;
    els.stop.hidden = !busy;
    document.body.classList.toggle("busy", busy);
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  function newChat() {
    stop();
    state.history = [];
    for (const node of Array.from(els.messages.children)) if (node !== els.emptyHint) node.remove();
    els.emptyHint.hidden = false;
    setStatus("");
    els.prompt.focus();
  }

  function autosize() {
    els.prompt.style.height = "auto";
    els.prompt.style.height = Math.min(els.prompt.scrollHeight, 200) + "px";
  }

  // ---------------------------------------------------------------- wiring

  function hasFiles(event) {
    return !!(event.dataTransfer && Array.from(event.dataTransfer.types || []).indexOf("Files") >= 0);
  }

  function wire() {
    els.send.addEventListener("click", send);
    els.stop.addEventListener("click", stop);
    els.newChat.addEventListener("click", newChat);
    els.settingsToggle.addEventListener("click", function () { toggleSettings(); });
    els.attach.addEventListener("click", function () { els.fileInput.click(); });
    els.fileInput.addEventListener("change", function () {
      addFiles(els.fileInput.files).then(function () { els.fileInput.value = ""; });
    });
    els.prompt.addEventListener("input", autosize);
    els.prompt.addEventListener("keydown", function (e) {
      // isComposing / 229: Enter that confirms an IME candidate (Chinese, Japanese input) must not send.
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); send(); }
      if (e.key === "Escape" && state.busy) stop();
    });
    els.prompt.addEventListener("paste", function (e) {
      const files = e.clipboardData && e.clipboardData.files;
      if (files && files.length) { e.preventDefault(); addFiles(files); }
    });
    for (const input of Object.values(SETTING_FIELDS).concat([els.apiKey])) input.addEventListener("change", saveSettings);
    els.apiKey.addEventListener("change", loadModels);

    let dragDepth = 0;
    window.addEventListener("dragenter", function (e) {
      if (!hasFiles(e)) return;
      e.preventDefault();
      dragDepth += 1;
      els.overlay.hidden = false;
    });
    window.addEventListener("dragleave", function (e) {
      if (!hasFiles(e)) return;
      dragDepth = Math.max(0, dragDepth - 1);
      if (!dragDepth) els.overlay.hidden = true;
    });
    window.addEventListener("dragover", function (e) {
      if (!hasFiles(e)) return;
      e.preventDefault(); // without this the browser opens the dropped file instead
      e.dataTransfer.dropEffect = "copy";
    });
    window.addEventListener("drop", function (e) {
      if (!hasFiles(e)) return;
      e.preventDefault();
      dragDepth = 0;
      els.overlay.hidden = true;
      addFiles(e.dataTransfer.files);
    });
  }

  loadSettings();
  wire();
  loadModels();
  els.prompt.focus();
})();
