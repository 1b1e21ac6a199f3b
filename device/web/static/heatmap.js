/* Attention heatmaps: a 7x7 map per word, bilinearly upscaled onto a canvas over the photo.
   Low attention is dimmed and high attention is tinted warm, so the looked-at region stands out. */
"use strict";
const heatmap = (() => {
  function draw(canvas, img, grid) {
    const w = img.naturalWidth || img.width, h = img.naturalHeight || img.height;
    if (!w || !h || !grid) return;
    // Draw at a modest resolution; CSS stretches it over the image (keeps phones fast).
    const scale = Math.min(1, 640 / Math.max(w, h));
    canvas.width = Math.max(1, Math.round(w * scale));
    canvas.height = Math.max(1, Math.round(h * scale));
    const rows = grid.length, cols = grid[0].length;
    let max = 0;
    for (const row of grid) for (const v of row) max = Math.max(max, v);
    max = max || 1;
    const small = document.createElement("canvas");
    small.width = cols; small.height = rows;
    const sctx = small.getContext("2d");
    const data = sctx.createImageData(cols, rows);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const v = Math.max(0, grid[r][c]) / max, i = 4 * (r * cols + c);
        // dark and opaque where the model did not look, warm and clear where it did
        data.data[i] = Math.round(255 * v);
        data.data[i + 1] = Math.round(170 * v);
        data.data[i + 2] = 0;
        data.data[i + 3] = Math.round(255 * (0.72 - 0.5 * v));
      }
    }
    sctx.putImageData(data, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    // Scaling 7 pixels to the full size puts each cell's centre over the centre of the image region
    // it was computed from; smoothing interpolates bilinearly between the centres.
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  }

  // Wire word buttons in `wordsEl` to show attention[i] on `canvas` over `img`.
  function attach(wordsEl, canvas, img, attention) {
    const buttons = Array.from(wordsEl.querySelectorAll(".word"));
    let pinned = -1;
    const show = (i) => {
      buttons.forEach((b, j) => b.classList.toggle("active", j === i));
      if (i < 0 || !attention || !attention[i]) { canvas.classList.remove("on"); return; }
      draw(canvas, img, attention[i]);
      canvas.classList.add("on");
    };
    buttons.forEach((b, i) => {
      b.addEventListener("mouseenter", () => show(i));
      b.addEventListener("focus", () => show(i));
      b.addEventListener("mouseleave", () => show(pinned));
      // a tap pins the word (phones have no hover); tapping it again clears
      b.addEventListener("click", () => { pinned = pinned === i ? -1 : i; show(pinned); });
    });
  }

  return { draw, attach };
})();
