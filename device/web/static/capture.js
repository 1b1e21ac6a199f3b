/* The capture page: fetch the attention maps and wire the word buttons to the heatmap. */
"use strict";
(async () => {
  const root = document.getElementById("capture");
  const wordsEl = document.getElementById("words");
  const img = document.getElementById("photo");
  const canvas = document.getElementById("heat");
  for (const t of document.querySelectorAll("time[datetime]")) t.textContent = edgecap.formatTime(t.dateTime);
  if (!wordsEl) return;  // a capture stored without attention
  try {
    const c = await edgecap.getJSON("/api/captures/" + root.dataset.id);
    if (!img.complete) await new Promise((ok) => img.addEventListener("load", ok, { once: true }));
    heatmap.attach(wordsEl, canvas, img, c.attention);
  } catch (e) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = "Attention maps unavailable: " + e.message;
    wordsEl.after(p);
  }
})();
