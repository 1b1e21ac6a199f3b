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

  const find = document.getElementById("find");
  const found = document.getElementById("found");
  const foundSection = document.getElementById("found-section");
  const tpl = document.getElementById("card-tpl");

  async function findSimilar(f) {
    const body = new FormData();
    body.append("image", f);
    body.append("k", "12");
    const res = await edgecap.getJSON(find.formAction, { method: "POST", body });
    found.replaceChildren(...res.items.map((c) => edgecap.card(tpl, c, false)));
    foundSection.hidden = false;
    document.getElementById("found-title").textContent = res.items.length
      ? `Captures that look like your photo (“${res.caption}”)` : "No stored capture looks like it yet.";
    statusEl.textContent = `Searched by photo in ${Math.round(res.took_ms)} ms`;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) { statusEl.textContent = "Choose a photo first."; return; }
    go.disabled = true;
    find.disabled = true;
    statusEl.classList.remove("error");
    const fail = (e) => { statusEl.textContent = e.message; statusEl.classList.add("error"); };
    // a new request replaces the previous answer, so an error is never shown beside an old result
    result.hidden = true;
    foundSection.hidden = true;
    if (ev.submitter === find) {
      statusEl.textContent = "Searching by photo…";
      try { await findSimilar(f); } catch (e) { fail(e); }
      go.disabled = false; find.disabled = false;
      return;
    }
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
      document.getElementById("score").textContent = edgecap.fmtConfidence(res.confidence);
      document.getElementById("model").textContent = res.model || "";
      document.getElementById("tags").replaceChildren(...(res.tags || []).map((t) => {
        const span = document.createElement("span");
        span.className = "tag";
        span.title = `confidence ${Math.round(t.p * 100)}%`;
        span.textContent = t.word;
        return span;
      }));
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
        s.className = "muted"; s.textContent = edgecap.fmtConfidence(b.confidence);
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
      fail(e);
    } finally {
      go.disabled = false;
      find.disabled = false;
    }
  });
})();
