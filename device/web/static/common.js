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

  // POST/DELETE a JSON body (or none).
  function send(method, url, data) {
    const options = { method };
    if (data !== undefined) {
      options.body = JSON.stringify(data);
      options.headers = { "Content-Type": "application/json" };
    }
    return getJSON(url, options);
  }

  // Cards show the time alone for today's captures, date and time otherwise; full: always both.
  function formatTime(iso, full = false) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay && !full ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : d.toLocaleString([], { weekday: full ? "short" : undefined, year: "numeric", month: "short", day: "numeric",
                               hour: "2-digit", minute: "2-digit" });
  }

  // A caption's confidence (0..1, the model's average probability per word) as people read it.
  function fmtConfidence(x) { return (x === null || x === undefined) ? "" : Math.round(Number(x) * 100) + "%"; }

  // One result card from the page's <template> (thumbnail, caption, time, source).
  function card(tpl, c, isNew) {
    const a = tpl.content.firstElementChild.cloneNode(true);
    a.href = c.url;
    a.dataset.id = c.id;
    a.dataset.ts = c.timestamp;
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
    if (isNew) a.classList.add("new");
    return a;
  }

  return { csrf, getJSON, send, formatTime, fmtConfidence, card };
})();
