/* The search page: results from /api/search (or /api/captures for newest first), live updates by
   polling. timeline.js and select.js hook in through edgecapSearch. */
"use strict";
const edgecapSearch = (() => {
  const form = document.getElementById("search");
  const q = document.getElementById("q");
  const results = document.getElementById("results");
  const statusEl = document.getElementById("status");
  const noticeEl = document.getElementById("notice");
  const moreBtn = document.getElementById("more");
  const tpl = document.getElementById("card-tpl");
  const FILTERS = ["since", "until", "from_time", "to_time", "source"];
  const POLL_MS = 4000;
  const listeners = [];   // called after every (re)load of the results
  let seq = 0;            // only the latest request may paint the results
  let nextOffset = null;  // paging of the newest-first list
  let newestId = 0;       // for live updates: the highest id seen (ids grow as captures are stored)
  let pollTimer = null;

  function filters() {
    const p = new URLSearchParams();
    for (const name of FILTERS) {
      const v = form.elements[name].value.trim();
      if (v) p.set(name, v);
    }
    return p;
  }

  // Everything the page shows, as query parameters (also what the export links download).
  function params() {
    const p = filters();
    const query = q.value.trim();
    if (query) p.set("q", query);
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
    const p = params();
    const k = form.elements.k.value;
    if (k !== "24") p.set("k", k);
    const s = p.toString();
    history.replaceState(null, "", s ? "?" + s : location.pathname);
  }

  function shownStatus(extra) {
    const n = results.children.length;
    const live = !form.elements.until.value;  // polling is off for a range that has ended
    statusEl.textContent = n ? `Newest captures · ${n} shown` + (extra ? ` · ${extra}` : live ? " · new ones appear here" : "")
                             : "No captures yet.";
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
          ? `${res.items.length} result${res.items.length === 1 ? "" : "s"} · ${ms} ms`
          : `Nothing matches “${query}”.`;
      } else {
        nextOffset = res.next_offset;
        shownStatus();
      }
      moreBtn.hidden = query !== "" || !nextOffset;
      for (const f of listeners) f();
    } catch (e) {
      if (my !== seq) return;
      statusEl.textContent = e.message;
    }
    schedulePoll();
  }

  // Live updates: while the newest-first list is shown, ask for captures stored after the newest one
  // seen. A capture's time is not its arrival order (`edgecap ingest` keeps a photo's own time), so
  // each goes where its time puts it; one older than the whole list waits for "Older captures".
  function schedulePoll() {
    clearTimeout(pollTimer);
    if (q.value.trim() || form.elements.until.value) return;
    pollTimer = setTimeout(poll, POLL_MS);
  }

  function place(c) {
    const key = (el) => [Number(el.dataset.ts), Number(el.dataset.id)];
    for (const el of results.children) {
      const [ts, id] = key(el);
      if (ts < c.timestamp || (ts === c.timestamp && id < c.id)) return el;
    }
    return null;
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
        let added = 0;
        for (const c of res.items) {
          newestId = Math.max(newestId, c.id);
          if (results.querySelector(`[data-id="${c.id}"]`)) continue;
          const before = place(c);
          if (before === null && nextOffset) continue;  // older than everything shown: later pages
          results.insertBefore(card(c, true), before);
          added += 1;
        }
        if (nextOffset) nextOffset += added;  // the server's pages moved down by as many
        if (added) { shownStatus(`${added} new`); for (const f of listeners) f(); }
      }
    } catch (e) { /* a missed poll is retried on the next tick */ }
    schedulePoll();
  }

  function refresh() { syncUrl(); run(); }

  let typingTimer = null;
  q.addEventListener("input", () => {
    clearTimeout(typingTimer);
    typingTimer = setTimeout(refresh, 200);
  });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); clearTimeout(typingTimer); refresh(); });
  for (const name of [...FILTERS, "k"]) {
    form.elements[name].addEventListener("change", refresh);
  }
  moreBtn.addEventListener("click", () => run(true));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) schedulePoll(); });
  run();

  return {
    form, results, statusEl, params, refresh,
    onLoad: (f) => listeners.push(f),
  };
})();
