/* The capture page: fetch the attention maps and wire the word buttons to the heatmap. */
"use strict";
(async () => {
  const root = document.getElementById("capture");
  const wordsEl = document.getElementById("words");
  const img = document.getElementById("photo");
  const canvas = document.getElementById("heat");
  for (const t of document.querySelectorAll("time[datetime]")) {
    t.textContent = edgecap.formatTime(t.dateTime, t.hasAttribute("data-full"));
  }
  document.getElementById("delete").addEventListener("click", () => deleteCapture(root.dataset.id));
  loadSimilar(root.dataset.id);
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

// "More like this": captures whose images are closest to this one (shown only when there are any).
async function loadSimilar(id) {
  try {
    const res = await edgecap.getJSON(`/api/captures/${id}/similar?k=8`);
    if (!res.items.length) return;
    const tpl = document.getElementById("card-tpl");
    document.getElementById("similar").replaceChildren(...res.items.map((c) => edgecap.card(tpl, c, false)));
    document.getElementById("similar-section").hidden = false;
  } catch (e) { /* optional section: leave it hidden */ }
}

// Delete (after a confirmation), then back to the search page, where it is gone.
async function deleteCapture(id) {
  if (!confirm("Delete this capture and its photo? This cannot be undone.")) return;
  const statusEl = document.getElementById("delete-status");
  try {
    await edgecap.send("DELETE", "/api/captures/" + id);
    window.location.href = "/";
  } catch (e) {
    statusEl.textContent = "Not deleted: " + e.message;
    statusEl.hidden = false;
  }
}
