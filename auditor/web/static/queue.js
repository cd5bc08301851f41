// The review queue: a grid of flagged examples, triaged by keyboard or in bulk.
"use strict";
(function () {
  const items = readJson("items") || [];
  const classes = readJson("classes") || [];
  const cards = Array.from(document.querySelectorAll(".card"));
  const byId = new Map(items.map((f) => [String(f.id), f]));
  const undoStack = []; // finding ids this page decided, most recent last
  let cursor = 0;

  function focus(i) {
    if (!cards.length) return;
    cursor = Math.max(0, Math.min(cards.length - 1, i));
    cards.forEach((c, j) => c.classList.toggle("cursor", j === cursor));
    cards[cursor].focus({ preventScroll: true });
    cards[cursor].scrollIntoView({ block: "nearest" });
  }

  function show(card, decision) {
    const f = byId.get(card.dataset.id);
    f.decision = decision;
    card.classList.remove("decided", "d-confirmed", "d-relabelled", "d-dismissed");
    if (decision) card.classList.add("decided", `d-${decision.decision}`);
    card.querySelector(".decision").textContent = decisionText(decision);
  }

  async function decide(card, decision, newLabel) {
    const f = byId.get(card.dataset.id);
    const body = { decision, expected_version: f.decision ? f.decision.version : null };
    if (decision === "relabelled") body.new_label = newLabel;
    const before = f.decision ? f.decision.version : null;
    try {
      const doc = await api("POST", `/api/findings/${f.id}/decision`, body);
      show(card, doc.decision);
      // a confirm of what is already confirmed records nothing: nothing of ours to undo
      if (doc.decision && doc.decision.version === before) toast("already confirmed; nothing new recorded");
      else undoStack.push(f.id);
      focus(cards.indexOf(card) + 1);
    } catch (err) {
      toast(err.message, true);
    }
  }

  async function undo() {
    const id = undoStack.pop();
    if (id === undefined) { toast("nothing to undo on this page"); return; }
    const card = cards.find((c) => c.dataset.id === String(id));
    const f = byId.get(String(id));
    try {
      const doc = await api("POST", `/api/findings/${id}/undo`, { expected_version: f.decision ? f.decision.version : null });
      show(card, doc.decision);
      focus(cards.indexOf(card));
      toast("undone");
    } catch (err) {
      toast(err.message, true);
    }
  }

  async function acceptSuggested(body) {
    if (window.AUDIT_STATUS !== "succeeded") { toast("wait until the audit has finished", true); return; }
    try {
      const doc = await api("POST", `/api/audits/${window.AUDIT_ID}/accept-suggested`, body);
      for (const [id, decision] of Object.entries(doc.decisions)) {
        const card = cards.find((c) => c.dataset.id === id);
        if (card) {
          show(card, decision);
          card.querySelector(".pick").checked = false;
        }
      }
      const away = doc.confirmed.filter((id) => !byId.has(String(id))).length;
      toast(`accepted the suggested label for ${doc.confirmed.length}` +
        (away ? ` (${away} not on this page)` : "") + (doc.skipped.length ? `; skipped ${doc.skipped.length} decided by someone` : ""));
    } catch (err) {
      toast(err.message, true);
    }
  }

  function selectedIds() {
    return cards.filter((c) => c.querySelector(".pick") && c.querySelector(".pick").checked).map((c) => Number(c.dataset.id));
  }

  document.addEventListener("keydown", (event) => {
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    const card = cards[cursor];
    const key = event.key;
    if (key === "j" || key === "ArrowRight") focus(cursor + 1);
    else if (key === "k" || key === "ArrowLeft") focus(cursor - 1);
    else if (key === "Enter" && card) location.href = `/findings/${card.dataset.id}`;
    else if (!window.CAN_DECIDE) return;
    else if (key === "c" && card) decide(card, "confirmed");
    else if (key === "d" && card) decide(card, "dismissed");
    else if (/^[0-9]$/.test(key) && card) {
      if (!classes.some((c) => c.index === Number(key))) { toast(`there is no class ${key}`, true); return; }
      decide(card, "relabelled", Number(key));
    } else if (key === "r" && card) {
      const label = classFromText(window.prompt("New label (class name or index)"), classes);
      if (label !== null) decide(card, "relabelled", label);
    } else if (key === "u") undo();
    else if (key === "x" && card) { const box = card.querySelector(".pick"); box.checked = !box.checked; }
    else if (key === "A") {
      const ids = selectedIds();
      if (!ids.length) { toast("select findings with x first", true); return; }
      acceptSuggested({ finding_ids: ids });
    } else return;
    event.preventDefault();
  });

  cards.forEach((c, i) => c.addEventListener("click", (e) => { if (e.target.tagName !== "A" && e.target.tagName !== "IMG") focus(i); }));
  const selBtn = document.getElementById("accept-selected");
  if (selBtn) selBtn.addEventListener("click", () => {
    const ids = selectedIds();
    if (!ids.length) { toast("select findings first", true); return; }
    acceptSuggested({ finding_ids: ids });
  });
  const topBtn = document.getElementById("accept-top");
  if (topBtn) topBtn.addEventListener("click", () => {
    const body = { top_k: Number(document.getElementById("top-k").value) };
    if (window.FILTER_LABEL) body.label = window.FILTER_LABEL;
    acceptSuggested(body);
  });
  // filters apply on change: no button to press
  document.querySelectorAll("[data-testid=filters] select").forEach((select) =>
    select.addEventListener("change", () => select.form.submit()));
  focus(0);
})();
