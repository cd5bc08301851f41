// One example: decide with buttons or the same keys as the queue.
"use strict";
(function () {
  const f = readJson("finding");
  const classes = readJson("classes") || [];
  const version = () => (f.decision ? f.decision.version : null);

  async function act(body, path) {
    try {
      await api("POST", path || `/api/findings/${f.id}/decision`, body);
      location.reload();
    } catch (err) {
      toast(err.message, true);
    }
  }
  const confirm = () => act({ decision: "confirmed", expected_version: version() });
  const dismiss = () => act({ decision: "dismissed", expected_version: version() });
  const relabel = (label) => act({ decision: "relabelled", new_label: label, expected_version: version() });
  const undo = () => act({ expected_version: version() }, `/api/findings/${f.id}/undo`);

  document.querySelectorAll("[data-act]").forEach((b) => b.addEventListener("click", () => {
    const a = b.dataset.act;
    if (a === "c") confirm();
    else if (a === "d") dismiss();
    else if (a === "u") undo();
    else if (a === "r") relabel(Number(document.getElementById("relabel").value));
  }));
  document.addEventListener("keydown", (event) => {
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    const go = (id) => { const a = document.getElementById(id); if (a) location.href = a.href; };
    if (key === "j" || key === "ArrowRight") go("next");
    else if (key === "k" || key === "ArrowLeft") go("prev");
    else if (!window.CAN_DECIDE) return;
    else if (key === "c") confirm();
    else if (key === "d") dismiss();
    else if (key === "u") undo();
    else if (/^[0-9]$/.test(key) && classes.some((c) => c.index === Number(key))) relabel(Number(key));
    else if (key === "r") {
      const label = classFromText(window.prompt("New label (class name or index)"), classes);
      if (label !== null) relabel(label);
    } else return;
    event.preventDefault();
  });
})();
