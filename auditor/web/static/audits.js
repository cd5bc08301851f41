// Live status: the audits table refreshes its status, progress and counts every two seconds.
"use strict";
(function () {
  async function refresh() {
    try {
      const res = await fetch("/api/audits", { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!res.ok) return;
      for (const a of await res.json()) {
        const row = document.querySelector(`tr[data-audit="${a.id}"]`);
        if (!row) continue;
        const status = row.querySelector(".status");
        status.textContent = a.status;
        status.className = `status s-${a.status}`;
        row.querySelector("progress").value = a.progress;
        row.querySelector(".msg").textContent = a.message || "";
        row.querySelector(".nfindings").textContent = a.findings;
      }
    } catch (e) { /* offline for a moment: try again next tick */ }
  }
  setInterval(refresh, 2000);
})();
