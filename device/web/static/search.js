/* The search page: results from /api/search (or /api/captures for newest first), live updates by polling. */
"use strict";
(() => {
  const form = document.getElementById("search");
  const q = document.getElementById("q");
  const results = document.getElementById("results");
  const statusEl = document.getElementById("status");
  const noticeEl = document.getElementById("notice");
  const moreBtn = document.getElementById("more");
  const tpl = document.getElementById("card-tpl");
  const POLL_MS = 4000;
  let seq = 0;            // only the latest request may paint the results
  let nextOffset = null;  // paging of the newest-first list
  let newestId = 0;       // for live updates
  let pollTimer = null;

  function filters() {
    const p = new URLSearchParams();
    for (const name of ["since", "until", "source"]) {
      const v = form.elements[name].value.trim();
      if (v) p.set(name, v);
    }
    return p;
  }

  const card = (c, isNew) => edgecap.card(tpl, c, isNew);

  function paint(items, append) {
    if (!append) results.replaceChildren();
    const frag = document.createDocumentFragment();
    for (const c of items) frag.appendChild(card(c, false));
    results.appendChild(frag);
    for (const c of items) newestId = Math.max(newestId, c.id);
  }

  function setNotice(text) {
    noticeEl.textContent = text || "";
    noticeEl.hidden = !text;
  }

  function syncUrl() {
    const p = filters();
    const query = q.value.trim();
    if (query) p.set("q", query);
    const k = form.elements.k.value;
    if (k !== "24") p.set("k", k);
    const s = p.toString();
    history.replaceState(null, "", s ? "?" + s : location.pathname);
  }

  async function run(append = false) {
    const my = ++seq;
    const query = q.value.trim();
    const k = form.elements.k.value;
    const p = filters();
    let url;
    if (query) {
      p.set("q", query); p.set("k", k);
      url = "/api/search?" + p;
    } else {
      p.set("limit", k);
      if (append && nextOffset) p.set("offset", nextOffset);
      url = "/api/captures?" + p;
    }
    if (!append) { newestId = 0; }
    statusEl.textContent = "Searching…";
    try {
      const t0 = performance.now();
      const res = await edgecap.getJSON(url);
      if (my !== seq) return;
      const ms = Math.round(performance.now() - t0);
      paint(res.items, append);
      setNotice(res.notice);
      if (query) {
        nextOffset = null;
        statusEl.textContent = res.items.length
          ? `${res.items.length} result${res.items.length === 1 ? "" : "s"} · ${res.mode} · ${ms} ms`
          : `Nothing matches “${query}”.`;
      } else {
        nextOffset = res.next_offset;
        const n = results.children.length;
        statusEl.textContent = n ? `Newest captures · ${n} shown · new ones appear here` : "No captures yet.";
      }
      moreBtn.hidden = query !== "" || !nextOffset;
    } catch (e) {
      if (my !== seq) return;
      statusEl.textContent = e.message;
    }
    schedulePoll();
  }

  // Live updates: while the newest-first list is shown, ask for captures newer than the newest one.
  function schedulePoll() {
    clearTimeout(pollTimer);
    if (q.value.trim() || form.elements.until.value) return;
    pollTimer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    if (document.hidden || q.value.trim()) { schedulePoll(); return; }
    const my = seq;
    const p = filters();
    p.set("after_id", newestId);
    p.set("limit", "100");
    try {
      const res = await edgecap.getJSON("/api/captures?" + p);
      if (my === seq && res.items.length) {
        const frag = document.createDocumentFragment();
        for (const c of res.items) frag.appendChild(card(c, true));
        results.prepend(frag);
        for (const c of res.items) newestId = Math.max(newestId, c.id);
        statusEl.textContent = `Newest captures · ${results.children.length} shown · ${res.items.length} new`;
      }
    } catch (e) { /* a missed poll is retried on the next tick */ }
    schedulePoll();
  }

  let typingTimer = null;
  q.addEventListener("input", () => {
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => { syncUrl(); run(); }, 200);
  });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); clearTimeout(typingTimer); syncUrl(); run(); });
  for (const name of ["since", "until", "source", "k"]) {
    form.elements[name].addEventListener("change", () => { syncUrl(); run(); });
  }
  moreBtn.addEventListener("click", () => run(true));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) schedulePoll(); });
  run();
})();
