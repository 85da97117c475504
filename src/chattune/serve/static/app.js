// The chattune web page: conversations, streamed replies, feedback, sources.
//
// Served as /static/app.js under a CSP that allows no inline script, no eval and no
// event-handler attributes, so all behaviour is wired here with addEventListener.
// Every text that came from the model or a user is set with textContent, never as HTML:
// a reply that looks like markup is shown as the characters it is.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const KEY = "chattune-key";
  const SVG = "http://www.w3.org/2000/svg";
  // Feather icons "thumbs-up" / "thumbs-down" (MIT): drawn by the page, so they show on
  // machines without an emoji font. Stroke and size come from app.css.
  const THUMBS = {
    up: "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3",
    down: "M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17",
  };

  let current = null;  // the open conversation's id
  let turns = [];      // its messages, as sent to /v1/chat/completions

  // ----- the API key: this tab only (sessionStorage) unless "Remember on this device" ---

  // A key saved by an older page lives in localStorage; it keeps working and shows as remembered.
  let key = sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "";

  function storeKey() {
    const remember = $("remember-key").checked;
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
    if (key) (remember ? localStorage : sessionStorage).setItem(KEY, key);
  }

  function headers() {
    const h = {"Content-Type": "application/json"};
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  async function api(path, options = {}) {
    const r = await fetch(path, {...options, headers: headers()});
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || r.statusText);
    }
    return r.json();
  }

  function showError(e) { $("error").textContent = e ? String(e.message || e) : ""; }

  // ----- conversations ------------------------------------------------------------------

  function showConversation(id, title) {
    current = id;
    $("title").textContent = id ? title : "No conversation open";
    $("title").classList.toggle("muted", !id);
    $("delete-chat").disabled = !id;
  }

  // Empties the message pane (showing `hint`, if any) and the sources panel.
  function clearMessages(hint) {
    const p = document.createElement("p");
    p.className = "muted"; p.id = "empty"; p.textContent = hint;
    $("messages").replaceChildren(...(hint ? [p] : []));
    $("source-list").replaceChildren("Passages the answer used appear here when a knowledge base is attached.");
  }

  async function loadConversations() {
    try {
      const list = await api("/v1/conversations");
      const items = list.data.map((c) => {
        const li = document.createElement("li");
        li.textContent = c.title; li.title = c.title; li.dataset.id = c.id;
        if (current === c.id) { li.classList.add("active"); showConversation(c.id, c.title); }
        li.addEventListener("click", () => openConversation(c.id));
        return li;
      });
      $("conversations").replaceChildren(...items);
      showError(null);
    } catch (e) { showError(e); }
  }

  async function openConversation(id) {
    try {
      const c = await api("/v1/conversations/" + encodeURIComponent(id));
      showConversation(c.id, c.title); turns = [];
      clearMessages(null);
      for (const m of c.messages) {
        addMessage(m.role, m.content, m.id);
        turns.push({role: m.role, content: m.content});
        if (m.sources) showSources(m.sources);  // the last grounded reply's passages
      }
      loadConversations();
    } catch (e) { showError(e); }
  }

  // One creation at a time: a message sent while "+ New chat" is still on its way goes into
  // that conversation instead of starting a second one.
  let creating = null;
  function newChat() {
    creating ??= createChat().finally(() => { creating = null; });
    return creating;
  }

  async function createChat() {
    try {
      const c = await api("/v1/conversations", {method: "POST", body: "{}"});
      showConversation(c.id, c.title); turns = [];
      clearMessages("Ask a question.");
      await loadConversations();
      $("input").focus();
    } catch (e) { showError(e); }
  }

  async function deleteChat() {
    if (!current || !confirm("Delete this conversation for good?")) return;
    try {
      await api("/v1/conversations/" + encodeURIComponent(current), {method: "DELETE"});
      showConversation(null); turns = [];
      clearMessages("Conversation deleted. Start a new chat and ask a question.");
      await loadConversations();
    } catch (e) { showError(e); }
  }

  // ----- messages -----------------------------------------------------------------------

  function addMessage(role, text, messageId) {
    $("empty")?.remove();
    const div = document.createElement("div");
    div.className = "msg " + role;
    const body = document.createElement("div");
    body.className = "text"; body.textContent = text;
    div.appendChild(body);
    $("messages").appendChild(div);
    if (role === "assistant" && messageId) addFeedback(div, messageId);
    $("messages").scrollTop = $("messages").scrollHeight;
    return div;
  }

  function icon(rating) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "16"); svg.setAttribute("height", "16");
    svg.setAttribute("aria-hidden", "true"); svg.setAttribute("focusable", "false");
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", THUMBS[rating]);
    svg.appendChild(path);
    return svg;
  }

  function addFeedback(div, messageId) {
    const conversation = current;  // the reply belongs to this one, even if another opens
    const bar = document.createElement("div"); bar.className = "feedback";
    for (const rating of ["up", "down"]) {
      const b = document.createElement("button"); b.type = "button";
      b.setAttribute("aria-label", "thumbs " + rating); b.title = "thumbs " + rating;
      b.dataset.rating = rating; b.appendChild(icon(rating));
      b.addEventListener("click", async () => {
        try {
          const path = `/v1/conversations/${encodeURIComponent(conversation)}` +
                       `/messages/${encodeURIComponent(messageId)}/feedback`;
          await api(path, {method: "POST", body: JSON.stringify({rating})});
          bar.querySelectorAll("button").forEach((x) => x.classList.toggle("chosen", x === b));
        } catch (e) { showError(e); }
      });
      bar.appendChild(b);
    }
    div.appendChild(bar);
  }

  // Reads the server-sent events of one streamed reply; calls onEvent with each parsed event.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader(); const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim(); buffer = buffer.slice(cut + 2);
        if (line.startsWith("data: ") && line !== "data: [DONE]") onEvent(JSON.parse(line.slice(6)));
      }
      $("messages").scrollTop = $("messages").scrollHeight;
    }
  }

  async function send(text) {
    if (!current) await newChat();
    if (!current) return;
    addMessage("user", text);
    turns.push({role: "user", content: text});
    const div = addMessage("assistant", "");
    const body = div.querySelector(".text");
    $("send").disabled = true;
    try {
      const r = await fetch("/v1/chat/completions", {method: "POST", headers: headers(),
        body: JSON.stringify({messages: turns, stream: true, conversation_id: current})});
      if (!r.ok) { const b = await r.json().catch(() => ({})); throw new Error(b.error ? b.error.message : r.statusText); }
      let reply = "", messageId = null;
      await readEvents(r, (event) => {
        if (event.error) throw new Error(event.error.message);  // the server ended the stream
        const delta = event.choices[0].delta;
        if (delta.content) { reply += delta.content; body.textContent = reply; }
        if (event.message_id) messageId = event.message_id;
        if (event.sources) showSources(event.sources);
      });
      body.textContent = reply.trim();
      turns.push({role: "assistant", content: reply.trim()});
      if (messageId) addFeedback(div, messageId);
      showError(null);
      loadConversations();
    } catch (e) { div.remove(); turns.pop(); showError(e); }
    finally { $("send").disabled = false; }
  }

  function showSources(sources) {
    const box = $("source-list");
    if (!sources.length) { box.replaceChildren("No matching documents."); return; }
    box.replaceChildren(...sources.map((s) => {
      const item = document.createElement("details"); item.className = "source" + (s.cited ? " cited" : "");
      const title = document.createElement("summary");
      title.textContent = `[${s.index}] ${s.source} (${s.location})`;
      const text = document.createElement("p"); text.textContent = s.text;
      item.append(title, text);
      return item;
    }));
  }

  // ----- wiring -------------------------------------------------------------------------

  $("api-key").value = key;
  $("remember-key").checked = Boolean(key) && localStorage.getItem(KEY) === key;
  $("save-key").addEventListener("click", () => {
    key = $("api-key").value.trim(); storeKey(); loadConversations();
  });
  $("remember-key").addEventListener("change", storeKey);
  $("new-chat").addEventListener("click", newChat);
  $("delete-chat").addEventListener("click", deleteChat);
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("input").value.trim();
    if (t) { $("input").value = ""; send(t); }
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  loadConversations();
})();
