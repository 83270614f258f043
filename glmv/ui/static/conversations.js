/* The page's conversations, kept in this browser (localStorage) so they survive a reload, and their list.
 *
 * Storage: "glmv.conversations" is the list [{id, title, updated}], newest first; each conversation's turns are
 * under "glmv.conversation.<id>"; "glmv.activeConversation" is the one shown. A page from before the list kept one
 * conversation under "glmv.conversation": it becomes the first entry of the list, so nobody loses a chat.
 * The list is a sidebar on wide screens and a drawer (the Chats button) at phone widths; style.css decides which.
 */
(function () {
  "use strict";

  const INDEX_KEY = "glmv.conversations";
  const ACTIVE_KEY = "glmv.activeConversation";
  const LEGACY_KEY = "glmv.conversation";
  const TITLE_CHARS = 48;

  function turnsKey(id) { return "glmv.conversation." + id; }

  function readJson(key, fallback) {
    try {
      const value = JSON.parse(localStorage.getItem(key) || "null");
      return value === null ? fallback : value;
    } catch (e) { return fallback; }
  }

  function index() {
    const list = readJson(INDEX_KEY, []);
    return Array.isArray(list) ? list.filter(function (c) { return c && typeof c.id === "string"; }) : [];
  }

  function writeIndex(list) {
    try { localStorage.setItem(INDEX_KEY, JSON.stringify(list)); } catch (e) { /* storage off */ }
  }

  function newId() {
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 8);
  }

  /** The list's name for a conversation: its first user message, on one line and cut short. */
  function titleOf(turns) {
    const first = turns.find(function (t) { return t.role === "user"; });
    if (!first) return "New chat";
    const text = String(first.text || "").replace(/\s+/g, " ").trim();
    if (text) return text.length > TITLE_CHARS ? text.slice(0, TITLE_CHARS - 1).trimEnd() + "\u2026" : text;
    const named = (first.attachments || []).find(function (a) { return a && a.name; });
    return named ? named.name : "New chat";
  }

  function load(id) {
    const turns = readJson(turnsKey(id), []);
    return Array.isArray(turns) ? turns : [];
  }

  /** Keep `turns` as conversation `id` (it moves to the top of the list); returns false when over the quota. */
  function save(id, turns) {
    const list = index();
    const found = list.find(function (c) { return c.id === id; });
    if (!turns.length) { // emptied (every turn edited away): out of the list until it has a message again
      localStorage.removeItem(turnsKey(id));
      writeIndex(list.filter(function (c) { return c.id !== id; }));
      return true;
    }
    try {
      localStorage.setItem(turnsKey(id), JSON.stringify(turns));
    } catch (e) {
      return false;
    }
    const entry = { id: id, title: found && found.title !== "New chat" ? found.title : titleOf(turns), updated: Date.now() };
    writeIndex([entry].concat(list.filter(function (c) { return c.id !== id; })));
    return true;
  }

  function remove(id) {
    localStorage.removeItem(turnsKey(id));
    writeIndex(index().filter(function (c) { return c.id !== id; }));
    if (active() === id) setActive(null);
  }

  function active() {
    try { return localStorage.getItem(ACTIVE_KEY); } catch (e) { return null; }
  }

  function setActive(id) {
    try {
      if (id) localStorage.setItem(ACTIVE_KEY, id);
      else localStorage.removeItem(ACTIVE_KEY);
    } catch (e) { /* storage off */ }
  }

  /** The one conversation an older page kept becomes an entry of the list (and the one shown). */
  function migrate() {
    const turns = readJson(LEGACY_KEY, null);
    if (turns === null) return;
    localStorage.removeItem(LEGACY_KEY);
    if (!Array.isArray(turns) || !turns.length) return;
    const id = newId();
    if (save(id, turns)) setActive(id);
  }

  /** Draw the list into `ul`: open on click, delete (the caller asks first) with the x button. */
  function render(ul, currentId, onOpen, onDelete) {
    const list = index();
    const items = list.map(function (c) {
      const li = document.createElement("li");
      li.className = "conversation-item" + (c.id === currentId ? " active" : "");
      li.dataset.id = c.id;
      const open = document.createElement("button");
      open.type = "button";
      open.className = "conversation-open";
      open.textContent = c.title || "New chat";
      open.title = c.title || "New chat";
      if (c.id === currentId) open.setAttribute("aria-current", "true");
      open.addEventListener("click", function () { onOpen(c.id); });
      const del = document.createElement("button");
      del.type = "button";
      del.className = "conversation-delete";
      del.textContent = "\u00D7";
      del.title = "Delete this chat";
      del.setAttribute("aria-label", "Delete the chat " + (c.title || ""));
      del.addEventListener("click", function () { onDelete(c.id, c.title || "New chat"); });
      li.append(open, del);
      return li;
    });
    if (!items.length) {
      const empty = document.createElement("li");
      empty.className = "conversation-empty";
      empty.textContent = "Your chats are kept in this browser and listed here.";
      items.push(empty);
    }
    ul.replaceChildren.apply(ul, items);
  }

  window.glmvConversations = {
    newId: newId, titleOf: titleOf, index: index, load: load, save: save, remove: remove, active: active,
    setActive: setActive, migrate: migrate, render: render,
  };
})();
