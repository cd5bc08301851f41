// Live status: the audits table polls the API every two seconds, updates each row's status,
// progress, time left and counts, and adds the audits started since the page was opened.
"use strict";
(function () {
  const body = document.querySelector("table.audits tbody");

  function cell(row, cls, text) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    if (text !== undefined) td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function newRow(a) {
    // built with textContent only: names come from users and data files
    const row = document.createElement("tr");
    row.dataset.audit = a.id;
    const link = document.createElement("a");
    link.href = `/audits/${a.id}`;
    link.textContent = a.id;
    cell(row).appendChild(link);
    cell(row, "", a.kind);
    cell(row, "", a.dataset);
    cell(row, "label", a.label || "");
    cell(row, "status");
    const progress = cell(row, "progress");
    progress.appendChild(Object.assign(document.createElement("progress"), { max: 1 }));
    progress.append(" ");
    progress.appendChild(Object.assign(document.createElement("span"), { className: "msg" }));
    progress.append(" ");
    progress.appendChild(Object.assign(document.createElement("span"), { className: "eta" }));
    cell(row, "nfindings");
    cell(row, "nflagged");
    cell(row, "ndecided");
    body.prepend(row); // newest first, as the page lists them
    document.getElementById("no-audits").hidden = true;
    return row;
  }

  function show(row, a) {
    const status = row.querySelector(".status");
    status.textContent = a.status;
    status.className = `status s-${a.status}`;
    row.querySelector("progress").value = a.progress;
    row.querySelector(".msg").textContent = a.message || "";
    row.querySelector(".eta").textContent = etaText(a);
    row.querySelector(".label").textContent = a.label || "";
    row.querySelector(".nfindings").textContent = a.findings;
    row.querySelector(".nflagged").textContent = a.flagged;
    row.querySelector(".ndecided").textContent = a.decided;
  }

  async function refresh() {
    try {
      const res = await fetch("/api/audits", { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!res.ok) return;
      const audits = await res.json();
      for (const a of audits.slice().reverse()) { // oldest first, so new rows end up newest on top
        const row = document.querySelector(`tr[data-audit="${a.id}"]`) || newRow(a);
        show(row, a);
      }
    } catch (e) { /* offline for a moment: try again next tick */ }
  }
  setInterval(refresh, 2000);
})();
