// Shared by the pages: JSON calls with the session's CSRF token, and a one-line toast.
"use strict";
const CSRF = document.querySelector('meta[name="csrf-token"]').content;

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF, "Accept": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  let doc = null;
  try { doc = await res.json(); } catch (e) { doc = null; }
  if (!res.ok) {
    const message = (doc && doc.detail) || `${res.status} ${res.statusText}`;
    const err = new Error(message);
    err.status = res.status;
    throw err;
  }
  return doc;
}

function toast(text, bad) {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.className = bad ? "bad" : "";
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, bad ? 8000 : 2500);
}

function readJson(id) {
  const el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : null;
}

// A class typed by name or index -> its index, or null (with a toast) when there is none.
function classFromText(text, classes) {
  text = (text || "").trim();
  if (!text) return null;
  const byName = classes.find((c) => c.name === text);
  if (byName) return byName.index;
  if (/^\d+$/.test(text) && classes.some((c) => c.index === Number(text))) return Number(text);
  toast(`unknown class "${text}"`, true);
  return null;
}

function decisionText(d) {
  if (!d) return "";
  return d.decision + (d.decision === "relabelled" ? ` → ${d.new_label_name}` : "") + ` · ${d.reviewer}`;
}

function typing(event) {
  const t = event.target;
  return t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA") && t.type !== "checkbox";
}

// "12 s", "4 min", "1.5 h": as the progress messages say it.
function duration(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function etaText(a) {
  return a.status === "running" && a.eta_seconds !== null && a.eta_seconds !== undefined ? `about ${duration(a.eta_seconds)} left` : "";
}
