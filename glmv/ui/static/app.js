/* glmv chat page: a client of this server's own OpenAI-compatible API.
 *
 * - /v1/models fills the model picker; /v1/chat/completions is called with stream: true and read with
 *   fetch + ReadableStream, parsing Server-Sent Events by hand (EventSource cannot POST).
 * - reasoning_content deltas go to a collapsible "Thinking" block, content deltas to the answer.
 * - Conversations are kept in this browser (localStorage, conversations.js) across reloads, listed in a sidebar
 *   (a drawer on phones) to switch, start and delete; assistant turns are sent back with the answer alone (no
 *   thinking), as GLM-4.1V expects. Attachments travel as data: URIs.
 * - Before each request the page counts the prompt (/tokenize) against the model's context: max_tokens is lowered
 *   to the room left, and a history that no longer fits is said so, with an offer to leave out the oldest turns.
 * - Regenerate, Copy and Edit-and-resend on the messages; grounding boxes drawn over the image (boxes.js).
 */
(function () {
  "use strict";

  const BASE = document.documentElement.dataset.base || "/";
  const md = window.glmvMarkdown;
  const boxes = window.glmvBoxes;
  const errors = window.glmvErrors;
  const chats = window.glmvConversations;
  const MIN_ROOM = 32; // fewer tokens than this left in the context: too little for the model to answer
  const $ = function (id) { return document.getElementById(id); };
  const els = {
    model: $("model"), messages: $("messages"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
    attach: $("attach"), fileInput: $("file-input"), attachments: $("attachments"), status: $("status"),
    settings: $("settings"), settingsToggle: $("settings-toggle"), newChat: $("new-chat"), overlay: $("drop-overlay"),
    temperature: $("temperature"), maxTokens: $("max-tokens"), budget: $("thinking-budget"),
    system: $("system-prompt"), apiKey: $("api-key"), extra: $("extra-body"), emptyHint: $("empty-hint"),
    chatList: $("conversation-list"), chatsToggle: $("conversations-toggle"), backdrop: $("drawer-backdrop"),
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
    card: null, // the /v1/models card of the chosen model (max_model_len)
    conversationId: null, // the conversation shown (conversations.js); null: a new one, not in the list yet
  };

  // ---------------------------------------------------------------- conversations, kept in this browser

  function storedTurns() {
    return state.history.map(function (t) {
      return t.role === "assistant" ? { role: "assistant", answer: t.answer, reasoning: t.reasoning || "" }
        : { role: "user", text: t.text, attachments: t.attachments };
    });
  }

  function saveConversation() {
    if (!state.conversationId) {
      if (!state.history.length) return; // a new chat joins the list with its first message
      state.conversationId = chats.newId();
    }
    const turns = storedTurns();
    if (!chats.save(state.conversationId, turns)) {
      // Over the browser's quota (big attachments): keep the words, say the files are not kept.
      const words = turns.map(function (t) { return t.role === "user" ? { role: "user", text: t.text, attachments: [] } : t; });
      if (chats.save(state.conversationId, words)) {
        setStatus("Attachments are too large to keep in this browser; the words of the chat are kept.");
      }
    }
    if (state.history.length) chats.setActive(state.conversationId);
    renderChats();
  }

  function renderTurns(turns) {
    for (const t of turns) {
      if (t.role === "user") {
        const turn = { role: "user", text: String(t.text || ""), attachments: Array.isArray(t.attachments) ? t.attachments : [] };
        state.history.push(turn);
        turn.view = renderUser(turn);
      } else if (t.role === "assistant") {
        const turn = { role: "assistant", answer: String(t.answer || ""), reasoning: String(t.reasoning || "") };
        state.history.push(turn);
        const view = renderAssistant(turn);
        turn.view = view.root;
        view.finish({ reasoning: turn.reasoning, answer: turn.answer, finish: null, usage: null, error: null,
          stopped: false, restored: true });
      }
    }
  }

  function clearView() {
    state.history = [];
    for (const node of Array.from(els.messages.children)) if (node !== els.emptyHint) node.remove();
    els.emptyHint.hidden = false;
    setStatus("");
  }

  /** Show conversation `id` (null: a new, empty one). Not while an answer streams: it belongs to the one shown. */
  function showConversation(id) {
    if (state.busy) {
      setStatus("Wait for the answer, or press Stop, before switching chats.", "error");
      return false;
    }
    clearView();
    state.conversationId = id;
    chats.setActive(id);
    if (id) renderTurns(chats.load(id));
    renderChats();
    toggleDrawer(false);
    return true;
  }

  function deleteConversation(id, title) {
    if (!window.confirm("Delete the chat \u201C" + title + "\u201D? It is removed from this browser.")) return;
    if (id === state.conversationId && !showConversation(null)) return;
    chats.remove(id);
    renderChats();
    setStatus("Chat deleted.");
  }

  function renderChats() {
    chats.render(els.chatList, state.conversationId, function (id) {
      if (id !== state.conversationId) showConversation(id);
      else toggleDrawer(false);
    }, deleteConversation);
  }

  function toggleDrawer(open) {
    const show = open === undefined ? !document.body.classList.contains("drawer-open") : open;
    document.body.classList.toggle("drawer-open", show);
    els.chatsToggle.setAttribute("aria-expanded", String(show));
  }

  function restoreConversation() {
    chats.migrate();
    const id = chats.active();
    const known = id && chats.index().some(function (c) { return c.id === id; });
    state.conversationId = known ? id : null;
    if (known) renderTurns(chats.load(id));
    renderChats();
  }

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

  /** An error box: the sentence that says what to do first, the server's raw error in a Details block below. */
  function errorView(error, className) {
    const box = document.createElement("div");
    box.className = className;
    const words = document.createElement("div");
    words.className = "error-words";
    words.textContent = error.words;
    box.appendChild(words);
    if (error.details) {
      const more = document.createElement("details");
      more.className = "error-details";
      const summary = document.createElement("summary");
      summary.textContent = "Details";
      const raw = document.createElement("div");
      raw.textContent = error.details;
      more.append(summary, raw);
      box.appendChild(more);
    }
    return box;
  }

  function showStatusError(error) {
    els.status.replaceChildren(errorView(error, "status-error"));
    els.status.className = "status error";
  }

  /** {words, details} from a failed HTTP response (errors.js reads the OpenAI error shape). */
  async function readError(resp) {
    const text = await resp.text().catch(function () { return ""; });
    return errors.explain(resp.status, text);
  }

  // ---------------------------------------------------------------- models

  async function loadModels() {
    try {
      const resp = await fetch(BASE + "v1/models", { headers: headers(false) });
      if (!resp.ok) {
        showStatusError(await readError(resp));
        if (resp.status === 401) toggleSettings(true);
        return;
      }
      const body = await resp.json();
      const previous = els.model.value;
      const cards = body.data || [];
      els.model.replaceChildren.apply(els.model, cards.map(function (card) {
        const option = new Option(shownName(card.id), card.id);
        option.title = card.id;
        return option;
      }));
      if (cards.some(function (c) { return c.id === previous; })) els.model.value = previous;
      const card = cards.find(function (c) { return c.id === els.model.value; });
      state.card = card || null;
      setStatus(card ? "Ready: " + shownName(card.id) + (card.max_model_len ? " (context " + card.max_model_len + " tokens)" : "") : "The server lists no model.", card ? "" : "error");
    } catch (e) {
      setStatus("Cannot reach the server (" + e.message + "). Is glmv serve running?", "error");
    }
  }

  /** A served name that is a folder path shows as its last part (the full name stays the value sent). */
  function shownName(id) {
    if (id.charAt(0) !== "/" && id.slice(0, 2) !== "./" && id.slice(0, 3) !== "../") return id;
    const parts = id.replace(/\/+$/, "").split("/");
    return parts[parts.length - 1] || id;
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
    const actions = document.createElement("div");
    actions.className = "actions";
    actions.appendChild(actionButton("Edit", "edit", "Put this message back in the box to change and resend it " +
      "(the turns after it are removed)", function () { editTurn(turn); }));
    root.appendChild(actions);
    append(root);
    return root;
  }

  function actionButton(label, name, title, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "action-" + name;
    b.textContent = label;
    b.title = title;
    b.addEventListener("click", onClick);
    return b;
  }

  /** The image a turn's boxes refer to: the last image attached at or before that turn. */
  function imageBefore(turn) {
    const end = state.history.indexOf(turn);
    for (let i = (end < 0 ? state.history.length : end) - 1; i >= 0; i--) {
      const t = state.history[i];
      if (t.role !== "user") continue;
      for (let j = t.attachments.length - 1; j >= 0; j--) if (t.attachments[j].kind === "image") return t.attachments[j];
    }
    return null;
  }

  /** The assistant bubble: a Thinking block (shown once reasoning arrives), the answer, a meta line, errors. */
  function renderAssistant(turn) {
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
    const actions = document.createElement("div");
    actions.className = "actions";
    actions.hidden = true;
    actions.append(
      actionButton("Copy", "copy", "Copy the answer", function () {
        copyText(turn.answer).then(function () { setStatus("Answer copied."); },
          function () { setStatus("The browser did not allow copying; select the text instead.", "error"); });
      }),
      actionButton("Regenerate", "regenerate", "Ask again for a new answer to the same message", function () {
        regenerate(turn);
      }));
    root.append(thinking, answer, note, meta, actions);
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
        if (result.notices) for (const text of result.notices) notes.push(text);
        if (notes.length) { note.hidden = false; note.textContent = notes.join(" "); }
        const found = result.answer ? boxes.extract(result.answer) : [];
        const image = found.length ? imageBefore(turn) : null;
        if (image) root.insertBefore(boxes.figure(image.dataUrl, found, image.name), note);
        if (result.error) root.insertBefore(errorView(result.error, "error"), meta);
        const parts = [];
        if (result.usage) parts.push(result.usage.completion_tokens + " tokens");
        const seconds = (performance.now() - started) / 1000;
        if (result.usage && result.usage.completion_tokens && seconds > 0) {
          parts.push((result.usage.completion_tokens / seconds).toFixed(1) + " tok/s");
        }
        parts.push(seconds.toFixed(1) + " s");
        if (result.finish) parts.push("finish: " + result.finish);
        meta.textContent = result.restored ? "" : parts.join(" \u00B7 ");
        actions.hidden = !!result.error && !result.answer;
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

  /** An error chunk in the middle of a stream: the server's OpenAI-shaped error, kept whole for errors.js. */
  class StreamError extends Error {
    constructor(chunk) {
      super(chunk.error.message || JSON.stringify(chunk.error));
      this.chunk = chunk;
    }
  }

  function copyText(text) {
    if (navigator.clipboard && navigator.clipboard.writeText) return navigator.clipboard.writeText(text);
    return Promise.reject(new Error("no clipboard"));
  }

  /** Prompt tokens of these messages as the server counts them (/tokenize runs the chat road). */
  async function promptTokens(body) {
    const resp = await fetch(BASE + "tokenize", { method: "POST", headers: headers(true),
      body: JSON.stringify({ model: body.model, messages: body.messages }) });
    if (!resp.ok) return null; // the chat request itself will say what is wrong
    return (await resp.json()).count;
  }

  /** Lower max_tokens to the room the context has left; null when the history itself no longer fits. */
  async function fitToContext(body) {
    const limit = state.card && state.card.max_model_len;
    if (!limit) return { body: body, notices: [] };
    const count = await promptTokens(body);
    if (count === null) return { body: body, notices: [] };
    const room = limit - count;
    if (room < MIN_ROOM) return { body: null, count: count, limit: limit };
    const notices = [];
    if (body.max_tokens !== undefined && body.max_tokens > room) {
      notices.push("Max tokens lowered from " + body.max_tokens + " to " + room + ": that is the room the model's " +
        "context (" + limit + " tokens) has left after this conversation.");
      body.max_tokens = room;
    }
    return { body: body, notices: notices };
  }

  function send() {
    if (state.busy) return;
    const text = els.prompt.value.trim();
    if (!text && !state.pending.length) return;
    try {
      requestBody(); // settings are checked before the message leaves the box
    } catch (e) {
      setStatus(e.message, "error");
      toggleSettings(true);
      return;
    }
    const turn = { role: "user", text: text, attachments: state.pending };
    state.history.push(turn);
    state.pending = [];
    renderPending();
    els.prompt.value = "";
    autosize();
    turn.view = renderUser(turn);
    saveConversation();
    return generate();
  }

  function removeTurnsFrom(index) {
    for (const t of state.history.splice(index)) if (t.view) t.view.remove();
    for (const offer of Array.from(els.messages.querySelectorAll(".msg.offer"))) offer.remove();
    saveConversation();
  }

  function editTurn(turn) {
    if (state.busy) return;
    const index = state.history.indexOf(turn);
    if (index < 0) return;
    removeTurnsFrom(index);
    els.prompt.value = turn.text;
    state.pending = turn.attachments.slice();
    renderPending();
    autosize();
    els.prompt.focus();
    if (!state.history.length) els.emptyHint.hidden = false;
    setStatus("Change the message and send it again.");
  }

  function regenerate(turn) {
    if (state.busy) return;
    const index = state.history.indexOf(turn);
    if (index < 0) return;
    removeTurnsFrom(index);
    generate();
  }

  /** Say the conversation no longer fits, and offer to leave out its oldest turns (they stay on screen, greyed). */
  function offerToDropOldest(count, limit) {
    const offer = document.createElement("div");
    offer.className = "msg offer";
    const text = document.createElement("div");
    const users = state.history.filter(function (t) { return t.role === "user"; }).length;
    text.textContent = "This conversation no longer fits the model's context: it is " + count + " tokens of the " +
      limit + " the model can take, with no room left for an answer." + (users > 1
      ? " Leave out the oldest turns to go on, or start a new chat."
      : " Your message alone is too long: shorten it or attach less.");
    offer.appendChild(text);
    if (users > 1) {
      offer.appendChild(actionButton("Leave out the oldest turns and send", "drop-oldest",
        "The model will no longer see the oldest messages", function () { offer.remove(); dropOldestAndSend(); }));
    }
    offer.appendChild(actionButton("New chat", "offer-new-chat", "Start a new conversation", newChat));
    append(offer);
  }

  async function dropOldestAndSend() {
    // Leave out whole turns (a question and its answer) from the start until the prompt leaves room to answer.
    for (;;) {
      const firstUser = state.history.findIndex(function (t) { return t.role === "user"; });
      const nextUser = state.history.findIndex(function (t, i) { return i > firstUser && t.role === "user"; });
      if (firstUser < 0 || nextUser < 0) break;
      for (const t of state.history.splice(0, nextUser)) if (t.view) t.view.classList.add("dropped");
      const body = requestBody();
      const count = await promptTokens(body);
      if (count === null || !state.card || state.card.max_model_len - count >= MIN_ROOM) break;
    }
    saveConversation();
    return generate();
  }

  async function generate() {
    let body;
    try {
      body = requestBody();
    } catch (e) {
      setStatus(e.message, "error");
      toggleSettings(true);
      return;
    }
    const turn = { role: "assistant", answer: "", reasoning: "" };
    setBusy(true);
    setStatus("Counting the prompt\u2026");
    const fitted = await fitToContext(body).catch(function () { return { body: body, notices: [] }; });
    if (!fitted.body) {
      setBusy(false);
      setStatus("The conversation no longer fits the model's context.", "error");
      offerToDropOldest(fitted.count, fitted.limit);
      return;
    }
    body = fitted.body;
    const userTurn = state.history[state.history.length - 1];
    const view = renderAssistant(turn);
    turn.view = view.root;
    const controller = new AbortController();
    state.controller = controller;
    setStatus("Generating\u2026");

    const result = { reasoning: "", answer: "", finish: null, usage: null, error: null, stopped: false,
      notices: fitted.notices };
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
          if (chunk.error) throw new StreamError(chunk);
          if (chunk.usage) result.usage = chunk.usage;
          if (chunk.prompt_info) result.notices = result.notices.concat(promptNotices(chunk.prompt_info));
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
      else if (e instanceof StreamError) result.error = errors.explain(null, e.chunk);
      else result.error = errors.explain(null, { error: { message: e.message, code: "connection_failed" } });
    }
    state.controller = null;
    result.reasoning = result.reasoning.trim();
    result.answer = result.answer.trim();
    turn.answer = result.answer;
    turn.reasoning = result.reasoning;
    if (!notSent) state.history.push(turn); // pushed before finish so the boxes find the image before it
    view.finish(result);
    if (notSent) {
      // Nothing was generated: take the turn back and put the message into the composer to fix and resend.
      const index = state.history.indexOf(userTurn);
      if (index >= 0) state.history.splice(index, 1);
      if (userTurn && userTurn.view) userTurn.view.classList.add("not-sent");
      if (userTurn && !els.prompt.value && !state.pending.length) {
        els.prompt.value = userTurn.text;
        state.pending = userTurn.attachments;
        renderPending();
        autosize();
      }
      setStatus("Not sent: fix the message or the settings and send again.", "error");
    } else {
      setStatus(result.error ? "The answer ended with an error." : result.stopped ? "Stopped." : "");
    }
    saveConversation();
    setBusy(false);
  }

  /** What the server says it did to the prompt (a document cut to fit), in a person's words. */
  function promptNotices(info) {
    const out = [];
    if (info.document_pages !== undefined && info.document_pages_total !== undefined &&
        info.document_pages < info.document_pages_total) {
      out.push("Only the first " + info.document_pages + " of the document's " + info.document_pages_total +
        " pages were read (the rest did not fit the model's context or the server's page limit), so the answer " +
        "is about those pages. Ask about fewer pages, or lower Max tokens in Settings to leave more room for the " +
        "document.");
    }
    return out;
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

  /** A new, empty chat; the one shown stays in the list (delete it there). */
  function newChat() {
    if (showConversation(null)) els.prompt.focus();
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
    els.chatsToggle.addEventListener("click", function () { toggleDrawer(); });
    els.backdrop.addEventListener("click", function () { toggleDrawer(false); });
    window.addEventListener("keydown", function (e) { if (e.key === "Escape") toggleDrawer(false); });
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
  restoreConversation();
  loadModels();
  els.prompt.focus();
})();
