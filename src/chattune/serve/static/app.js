// The chattune web page: conversations, streamed replies, feedback, sources, the bot's
// decision under each reply, and human handoff (a banner while a person has the
// conversation, their replies shown as a person's, polled every 2 s while the tab is shown).
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
  let handoff = {state: "bot"};  // who answers it: the bot, or a person (waiting / agent)
  let shown = 0;       // stored messages on screen (polling re-renders when this changes)
  let sending = false; // a reply is on its way: polling leaves the pane alone
  let poller = null;   // the polling timer while handed off
  const POLL_MS = 2000;
  const handedOff = () => handoff.state === "waiting" || handoff.state === "agent";

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
    if (!id) showHandoff({state: "bot"});
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
      render(c);
      loadConversations();
    } catch (e) { showError(e); }
  }

  // Shows a stored conversation: its messages (with their decisions and authors) and who
  // answers it now.
  function render(c) {
    showConversation(c.id, c.title); turns = [];
    clearMessages(null);
    for (const m of c.messages) {
      addMessage(m.role, m.content, m.id, m);
      turns.push({role: m.role, content: m.content});
      if (m.sources) showSources(m.sources);  // the last grounded reply's passages
    }
    shown = c.messages.length;
    showHandoff(c.handoff || {state: "bot"});
  }

  // ----- human handoff: the banner, asking for a person, polling for their replies ------

  function showHandoff(h) {
    handoff = h;
    $("handoff").hidden = !handedOff();
    $("handoff-detail").textContent = h.state === "agent"
      ? (h.agent || "A person") + " is answering." : "Waiting for a person to join.";
    $("ask-person").disabled = !current || handedOff();
    if (handedOff()) startPolling(); else stopPolling();
  }

  function startPolling() {
    if (poller === null && document.visibilityState === "visible") {
      poller = setInterval(poll, POLL_MS);
    }
  }

  function stopPolling() {
    if (poller !== null) { clearInterval(poller); poller = null; }
  }

  // New messages from a person, or the conversation given back to the bot.
  async function poll() {
    const id = current;
    if (!id || sending) return;
    try {
      const c = await api("/v1/conversations/" + encodeURIComponent(id));
      if (id !== current || sending) return;  // another conversation opened meanwhile
      if (c.messages.length !== shown || c.handoff.state !== handoff.state) render(c);
    } catch (e) { showError(e); stopPolling(); }
  }

  async function askForPerson() {
    if (!current) return;
    try {
      const c = await api("/v1/conversations/" + encodeURIComponent(current) + "/handoff",
                          {method: "POST", body: "{}"});
      showHandoff(c.handoff);
    } catch (e) { showError(e); }
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") stopPolling();
    else if (handedOff()) { startPolling(); poll(); }
  });

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
      showConversation(c.id, c.title); turns = []; shown = 0;
      clearMessages("Ask a question.");
      showHandoff(c.handoff || {state: "bot"});
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

  // One message; `meta` is what the store keeps with it (nlu, author, agent).
  function addMessage(role, text, messageId, meta = {}) {
    $("empty")?.remove();
    const div = document.createElement("div");
    div.className = "msg " + role;
    if (meta.author === "agent") {  // a person wrote it: say so, and no thumbs for the bot
      div.classList.add("agent");
      const who = document.createElement("div");
      who.className = "author"; who.textContent = (meta.agent || "A person") + " · from our team";
      div.appendChild(who);
    }
    const body = document.createElement("div");
    body.className = "text"; body.textContent = text;
    div.appendChild(body);
    $("messages").appendChild(div);
    if (meta.nlu) addDecision(div, meta.nlu);
    if (role === "assistant" && messageId && meta.author !== "agent") addFeedback(div, messageId);
    $("messages").scrollTop = $("messages").scrollHeight;
    return div;
  }

  // The bot's decision under its reply: route; intent and confidence; entities; sentiment.
  function addDecision(div, nlu) {
    const parts = ["route: " + nlu.route];
    if (nlu.intent) parts.push(`intent: ${nlu.intent} (${Number(nlu.confidence).toFixed(2)})`);
    for (const e of nlu.entities || []) parts.push(`${e.type}=${e.value}`);
    if (typeof nlu.sentiment === "number") parts.push("sentiment " + nlu.sentiment.toFixed(2));
    const line = document.createElement("div");
    line.className = "decision"; line.textContent = parts.join(" · ");
    line.title = nlu.reason || "";
    div.appendChild(line);
  }

  // The turns as the model takes them: one message per side in turn (messages sent while a
  // person was asked for, or a person's two replies, are joined).
  function alternating(list) {
    const out = [];
    for (const t of list) {
      const last = out[out.length - 1];
      if (last && last.role === t.role) last.content += "\n\n" + t.content;
      else out.push({...t});
    }
    return out;
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
    $("send").disabled = true; sending = true;
    try {
      const r = await fetch("/v1/chat/completions", {method: "POST", headers: headers(),
        body: JSON.stringify({messages: alternating(turns), stream: true, conversation_id: current})});
      if (!r.ok) { const b = await r.json().catch(() => ({})); throw new Error(b.error ? b.error.message : r.statusText); }
      let reply = "", messageId = null, nlu = null, state = null;
      await readEvents(r, (event) => {
        if (event.error) throw new Error(event.error.message);  // the server ended the stream
        const delta = event.choices[0].delta;
        if (delta.content) { reply += delta.content; body.textContent = reply; }
        if (event.message_id) messageId = event.message_id;
        if (event.sources) showSources(event.sources);
        if (event.nlu) nlu = event.nlu;
        if (event.handoff) state = event.handoff;
      });
      shown += 1;  // the user message
      if (state && !messageId) {
        div.remove();  // a person has the conversation: the bot said nothing
      } else {
        body.textContent = reply.trim();
        turns.push({role: "assistant", content: reply.trim()});
        if (nlu) addDecision(div, nlu);
        if (messageId) { addFeedback(div, messageId); shown += 1; }
      }
      if (state) showHandoff({...handoff, ...state});
      showError(null);
      loadConversations();
    } catch (e) { div.remove(); turns.pop(); showError(e); }
    finally { $("send").disabled = false; sending = false; }
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
  $("ask-person").addEventListener("click", askForPerson);
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
