/* Choosing captures on the search page to delete them, and the export links for what is shown. */
"use strict";
(() => {
  const results = edgecapSearch.results;
  const selectBtn = document.getElementById("select");
  const deleteBtn = document.getElementById("delete-selected");
  const links = { csv: "export-csv", json: "export-json", zip: "export-zip" };
  let selecting = false;

  function updateExport() {
    const p = edgecapSearch.params();
    for (const [fmt, id] of Object.entries(links)) {
      p.set("format", fmt);
      document.getElementById(id).href = "/api/export?" + p;
    }
  }

  const chosen = () => Array.from(results.querySelectorAll('.card[aria-checked="true"]'));

  function updateDelete() {
    const n = chosen().length;
    deleteBtn.hidden = !selecting;
    deleteBtn.disabled = n === 0;
    deleteBtn.textContent = n ? `Delete ${n} selected` : "Delete selected";
  }

  // In select mode each card is a checkbox (an <a> may take that role): a click or Space ticks it.
  function markCards() {
    for (const a of results.querySelectorAll(".card")) {
      if (selecting) {
        a.setAttribute("role", "checkbox");
        if (!a.hasAttribute("aria-checked")) a.setAttribute("aria-checked", "false");
      } else {
        a.removeAttribute("role");
        a.removeAttribute("aria-checked");
      }
    }
    updateDelete();
  }

  function toggle(a) {
    a.setAttribute("aria-checked", String(a.getAttribute("aria-checked") !== "true"));
    updateDelete();
  }

  results.addEventListener("click", (ev) => {
    const a = ev.target.closest(".card");
    if (!selecting || !a) return;
    ev.preventDefault();
    toggle(a);
  });
  results.addEventListener("keydown", (ev) => {
    const a = ev.target.closest(".card");
    if (!selecting || !a || (ev.key !== " " && ev.key !== "Enter")) return;
    ev.preventDefault();
    toggle(a);
  });

  selectBtn.addEventListener("click", () => {
    selecting = !selecting;
    selectBtn.setAttribute("aria-pressed", String(selecting));
    selectBtn.textContent = selecting ? "Done" : "Select";
    markCards();
  });

  deleteBtn.addEventListener("click", async () => {
    const cards = chosen();
    if (!cards.length) return;
    const n = cards.length;
    if (!confirm(`Delete ${n} capture${n === 1 ? "" : "s"} with ${n === 1 ? "its photo" : "their photos"}? This cannot be undone.`)) return;
    try {
      const res = await edgecap.send("POST", "/api/captures/delete", { ids: cards.map((a) => Number(a.dataset.id)) });
      for (const a of cards) a.remove();
      edgecapSearch.statusEl.textContent = `Deleted ${res.deleted} capture${res.deleted === 1 ? "" : "s"}.`;
    } catch (e) {
      edgecapSearch.statusEl.textContent = e.message;
    }
    updateDelete();
  });

  edgecapSearch.onLoad(() => { updateExport(); markCards(); });
  updateExport();
})();
