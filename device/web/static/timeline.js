/* The timeline of a day: captures per hour from /api/timeline. Choosing an hour shows that hour's
   captures (it sets the date and time filters); choosing it again shows the whole day. */
"use strict";
(() => {
  const section = document.getElementById("timeline");
  const hoursEl = document.getElementById("hours");
  const ticksEl = document.getElementById("ticks");
  const dayEl = document.getElementById("timeline-day");
  const prev = document.getElementById("day-prev");
  const next = document.getElementById("day-next");
  const f = edgecapSearch.form.elements;
  const pad = (h) => String(h).padStart(2, "0") + ":00";
  let shown = null;  // the timeline last drawn

  function dayLabel(day) {
    const d = new Date(day + "T12:00:00");
    return isNaN(d) ? day : d.toLocaleDateString([], { weekday: "long", year: "numeric", month: "long", day: "numeric" });
  }

  // The day to draw: the "From" date when one is set, else the server's choice (the newest capture's).
  async function load() {
    const p = new URLSearchParams();
    if (f.since.value) p.set("day", f.since.value);
    if (f.source.value) p.set("source", f.source.value);
    try {
      draw(await edgecap.getJSON("/api/timeline?" + p));
    } catch (e) { section.hidden = true; }
  }

  function draw(t) {
    shown = t;
    const peak = Math.max(1, ...t.hours);
    const oneDay = f.since.value === t.day && f.until.value === t.day;
    const from = oneDay && f.from_time.value ? Number(f.from_time.value.slice(0, 2)) : null;
    hoursEl.replaceChildren(...t.hours.map((n, h) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "hour";
      b.dataset.hour = h;
      b.disabled = n === 0;
      b.setAttribute("aria-pressed", String(from === h));
      b.setAttribute("aria-label", `${pad(h)} to ${pad((h + 1) % 24)}: ${n} capture${n === 1 ? "" : "s"}`);
      b.title = b.getAttribute("aria-label");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.height = (n ? 8 + 92 * n / peak : 0) + "%";  // CSSOM, which the page's CSP allows
      b.append(bar);
      return b;
    }));
    // hour marks under the bars (the buttons' own names say the hour)
    ticksEl.replaceChildren(...t.hours.map((_, h) => {
      const s = document.createElement("span");
      s.textContent = h % 6 === 0 ? pad(h) : "";
      return s;
    }));
    dayEl.textContent = `${dayLabel(t.day)} · ${t.total} capture${t.total === 1 ? "" : "s"}`;
    prev.disabled = !t.prev_day;
    next.disabled = !t.next_day;
    section.hidden = false;
  }

  function showDay(day, hour) {
    f.since.value = day;
    f.until.value = day;
    f.from_time.value = hour === null ? "" : pad(hour);
    f.to_time.value = hour === null || hour === 23 ? "" : pad(hour + 1);
    edgecapSearch.refresh();
  }

  hoursEl.addEventListener("click", (ev) => {
    const b = ev.target.closest("button.hour");
    if (!b || !shown) return;
    const again = b.getAttribute("aria-pressed") === "true";
    showDay(shown.day, again ? null : Number(b.dataset.hour));
  });
  prev.addEventListener("click", () => shown && shown.prev_day && showDay(shown.prev_day, null));
  next.addEventListener("click", () => shown && shown.next_day && showDay(shown.next_day, null));
  edgecapSearch.onLoad(load);
})();
