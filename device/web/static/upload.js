/* Caption a photo: POST it to /api/caption, show the caption, beams and attention heatmaps. */
"use strict";
(() => {
  const form = document.getElementById("upload");
  const file = document.getElementById("image");
  const go = document.getElementById("go");
  const statusEl = document.getElementById("status");
  const result = document.getElementById("result");
  const img = document.getElementById("photo");
  const canvas = document.getElementById("heat");
  const wordsEl = document.getElementById("words");
  let objectUrl = null;

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) { statusEl.textContent = "Choose a photo first."; return; }
    go.disabled = true;
    statusEl.textContent = "Captioning…";
    try {
      const body = new FormData(form);
      const res = await edgecap.getJSON(form.action, { method: "POST", body });
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = URL.createObjectURL(f);
      img.src = objectUrl;
      await img.decode().catch(() => {});
      document.getElementById("caption").textContent = res.caption;
      img.alt = res.caption;
      document.getElementById("score").textContent = edgecap.fmtScore(res.score);
      document.getElementById("model").textContent = res.model || "";
      wordsEl.replaceChildren();
      res.words.forEach((w, i) => {
        const b = document.createElement("button");
        b.type = "button"; b.className = "word"; b.dataset.i = i; b.textContent = w;
        wordsEl.append(b, " ");
      });
      const beams = document.getElementById("beams");
      beams.replaceChildren(...res.beams.map((b) => {
        const li = document.createElement("li");
        li.textContent = `${b.text} `;
        const s = document.createElement("span");
        s.className = "muted"; s.textContent = edgecap.fmtScore(b.score);
        li.append(s);
        return li;
      }));
      const kept = document.getElementById("kept");
      kept.hidden = !res.capture;
      if (res.capture) document.getElementById("kept-link").href = res.capture.url;
      canvas.classList.remove("on");
      heatmap.attach(wordsEl, canvas, img, res.attention);
      result.hidden = false;
      statusEl.textContent = `Captioned in ${Math.round(res.took_ms)} ms` + (res.capture ? " · kept in the store" : "");
    } catch (e) {
      statusEl.textContent = e.message;
    } finally {
      go.disabled = false;
    }
  });
})();
