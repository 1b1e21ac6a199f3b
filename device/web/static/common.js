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

  return { csrf, getJSON, formatTime, fmtScore };
})();
