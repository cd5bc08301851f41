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


// Admins: "Verify by retraining" asks for an `audit verify` of this audit (POST /api/audits/{id}/verify)
// and links to the verify audit, whose page follows its progress.
(function () {
  const button = document.getElementById("verify");
  if (!button) return;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const doc = await api("POST", `/api/audits/${button.dataset.audit}/verify`, {});
      toast(`verify audit ${doc.id} ${doc.status}: retraining with the decisions applied`);
      const link = document.createElement("a");
      link.href = `/audits/${doc.id}`;
      link.textContent = ` follow audit ${doc.id}`;
      link.dataset.testid = "verify-link";
      button.after(link);
    } catch (err) {
      toast(err.message, true);
      button.disabled = false;
    }
  });
})();
