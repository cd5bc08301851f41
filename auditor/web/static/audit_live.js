// The audit page of a queued or running audit follows it without a reload: every two seconds
// it reads /api/audits/{id} and updates the status, progress bar, message and time left; when
// the audit has finished it reloads once, so the queue shows the findings and bulk actions open.
"use strict";
(function () {
  const banner = document.querySelector("[data-testid=running]");
  if (!banner || !["queued", "running"].includes(window.AUDIT_STATUS)) return;
  const status = document.querySelector("[data-testid=status]");

  async function refresh() {
    let a;
    try {
      const res = await fetch(`/api/audits/${window.AUDIT_ID}`, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!res.ok) return;
      a = await res.json();
    } catch (e) { return; /* offline for a moment: try again next tick */ }
    status.textContent = a.status;
    status.className = `status s-${a.status}`;
    banner.querySelector("progress").value = a.progress;
    banner.querySelector(".pct").textContent = `${Math.round(100 * a.progress)}%`;
    banner.querySelector(".msg").textContent = a.message || "";
    banner.querySelector(".eta").textContent = etaText(a);
    if (!["queued", "running"].includes(a.status)) {
      clearInterval(timer);
      location.reload();
    }
  }
  const timer = setInterval(refresh, 2000);
})();
