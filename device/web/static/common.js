/* edgecap: helpers shared by the pages (no framework, no build step). */
"use strict";
const edgecap = (() => {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // fetch JSON from the API; throws an Error carrying the server's one-line message.
  async function getJSON(url, options = {}) {
    const headers = Object.assign({ "Accept": "application/json" }, options.headers || {});
    if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = csrf();
    const resp = await fetch(url, Object.assign({ credentials: "same-origin" }, options, { headers }));
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (resp.status === 401) { window.location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); }
    if (!resp.ok) throw new Error((body && body.error) || ("HTTP " + resp.status));
    return body;
  }

  function formatTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    const now = new Date();
    const sameDay = d.toDateString() === now.toDateString();
    return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
                   : d.toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  function fmtScore(x) { return (x === null || x === undefined) ? "" : Number(x).toFixed(2); }

  // One result card from the page's <template> (thumbnail, caption, time, source, score).
  function card(tpl, c, isNew) {
    const a = tpl.content.firstElementChild.cloneNode(true);
    a.href = c.url;
    a.dataset.id = c.id;
    const img = a.querySelector("img");
    img.src = c.thumb_url;
    img.alt = c.caption;
    a.querySelector(".cap").textContent = c.caption;
    // object tags: what the ImageNet head saw, even where the caption is wrong
    a.querySelector(".tags").textContent = (c.tags || []).map((t) => t.word).join(" · ");
    const t = a.querySelector("time");
    t.dateTime = c.time || "";
    t.textContent = formatTime(c.time);
    a.querySelector(".src").textContent = c.source || "";
    // search results show how well they match; the newest-first list shows the caption's own score
    const ranked = c.rank_score !== undefined;
    a.querySelector(".score").textContent = (ranked ? "match " : "score ") + fmtScore(ranked ? c.rank_score : c.score);
    if (isNew) a.classList.add("new");
    return a;
  }

  return { csrf, getJSON, formatTime, fmtScore, card };
})();
