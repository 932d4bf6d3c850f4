/* HematoVision review pages: the API key, keyed fetches and the list pages. */
"use strict";
const HV = (() => {
  const KEY = "hv_api_key";
  const key = () => localStorage.getItem(KEY) || "";

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k === "style") e.style.cssText = v; // CSSOM, which the Content-Security-Policy allows (a style attribute it does not)
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  let waiting = null;
  function askKey() {
    const dlg = document.getElementById("key-dialog");
    if (!waiting) {
      waiting = new Promise((resolve) => {
        dlg.addEventListener("close", () => {
          const v = document.getElementById("key-input").value.trim();
          if (v) localStorage.setItem(KEY, v);
          showWho(); waiting = null; resolve();
        }, { once: true });
      });
      document.getElementById("key-input").value = "";
      dlg.showModal();
    }
    return waiting;
  }

  function showWho() {
    document.getElementById("who").textContent = key() ? "key " + key().slice(0, 10) + "…" : "no API key";
  }

  /** fetch with the key; JSON in and out; asks for a key on 401/403 and retries once. */
  async function api(path, opts = {}, retried = false) {
    if (!key()) await askKey();
    const headers = Object.assign({ "X-API-Key": key() }, opts.headers || {});
    if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(opts.json); }
    const r = await fetch(path, { method: opts.method || "GET", headers, body: opts.body });
    if ((r.status === 401 || r.status === 403) && !retried) { await askKey(); return api(path, opts, true); }
    if (opts.raw) return r;
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { const err = new Error((body.error && body.error.message) || r.statusText); err.status = r.status; err.code = body.error && body.error.code; throw err; }
    return body;
  }

  /** An image from the keyed API as an object URL. */
  async function imageUrl(path) {
    const r = await api(path, { raw: true });
    if (!r.ok) throw new Error("image " + r.status);
    return URL.createObjectURL(await r.blob());
  }

  let toastTimer = null;
  function toast(msg, isError = false) {
    const t = document.getElementById("toast");
    t.textContent = msg; t.className = "show" + (isError ? " error" : "");
    clearTimeout(toastTimer); toastTimer = setTimeout(() => { t.className = ""; }, isError ? 6000 : 2500);
  }

  const fmtTime = (iso) => iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "—";
  const pct = (x) => (x === null || x === undefined) ? "—" : Number(x).toFixed(1);
  const progress = (p, done) => el("span", {}, el("span", { class: "progress" + (done ? " done" : "") }, el("span", { style: `width:${Math.round(100 * p)}%` })), Math.round(100 * p) + "%");
  const sev = (s) => el("span", { class: "sev " + (s || "info"), text: s || "none" });

  function failRow(tbody, cols, e) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: cols, class: "muted", text: "Could not load: " + e.message })));
  }

  const pages = {
    async batches() {
      const tbody = document.querySelector("#batches tbody");
      async function load() {
        let doc;
        try { doc = await api("/api/v1/batches?limit=100"); } catch (e) { failRow(tbody, 6, e); return; }
        if (!doc.batches.length) { tbody.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No batches yet." }))); return; }
        tbody.replaceChildren(...doc.batches.map((b) => {
          const states = Object.entries(b.states).map(([k, v]) => `${v} ${k}`).join(", ");
          return el("tr", {},
            el("td", {}, el("a", { href: `/ui/batches/${b.id}`, text: b.name || b.id.slice(0, 8) }), el("div", { class: "muted small", text: b.id })),
            el("td", { text: fmtTime(b.created_at) }),
            el("td", { text: String(b.priority) }),
            el("td", {}, el("span", { class: "pill " + b.state, text: b.state })),
            el("td", {}, progress(b.progress, b.state === "finished")),
            el("td", {}, `${b.job_ids.length}`, el("div", { class: "muted small", text: states })));
        }));
        if (doc.batches.some((b) => b.state !== "finished")) setTimeout(load, 4000);
      }
      load();
    },

    async batch(batchId) {
      const tbody = document.querySelector("#slides tbody");
      async function load() {
        let b;
        try { b = await api(`/api/v1/batches/${encodeURIComponent(batchId)}`); } catch (e) { failRow(tbody, 5, e); return; }
        document.getElementById("batch-title").textContent = b.name || "Batch " + b.id.slice(0, 8);
        document.getElementById("batch-meta").textContent = `${b.jobs.length} slides · submitted ${fmtTime(b.created_at)} · priority ${b.priority} · ${b.state}`;
        tbody.replaceChildren(...b.jobs.map((j) => el("tr", {},
          el("td", {}, j.state === "succeeded" ? el("a", { href: `/ui/slides/${j.slide_id}`, text: j.filename }) : j.filename,
            j.error ? el("div", { class: "muted small", text: j.error }) : null),
          el("td", {}, el("span", { class: "pill " + j.state, text: j.state }),
            (j.state === "queued" || j.state === "running") && j.stage ? el("div", { class: "muted small", text: j.stage }) : null),
          el("td", {}, progress(j.progress, j.state === "succeeded")),
          el("td", { text: j.duration_s ? j.duration_s.toFixed(1) + " s" : "—" }),
          el("td", {}, j.state === "succeeded" ? el("a", { class: "button", href: `/ui/slides/${j.slide_id}`, text: "Review" }) : null))));
        if (b.state !== "finished") setTimeout(load, 3000);
      }
      load();
    },

    async flags() {
      const box = document.getElementById("flag-list");
      const since = document.getElementById("since");
      async function load() {
        let q = "";
        if (since.value) q = "?since=" + new Date(Date.now() - Number(since.value) * 3600e3).toISOString();
        let doc;
        try { doc = await api("/api/v1/flags" + q); } catch (e) { box.replaceChildren(el("p", { class: "muted", text: "Could not load: " + e.message })); return; }
        if (!doc.slides.length) { box.replaceChildren(el("p", { class: "muted", text: "No flagged slides in this period." })); return; }
        box.replaceChildren(...doc.slides.map((s) => el("article", { class: "card " + s.max_severity, "data-slide": s.slide_id },
          el("div", {}, sev(s.max_severity)),
          el("div", {},
            el("h3", {}, el("a", { href: `/ui/slides/${s.slide_id}`, text: s.filename })),
            el("div", { class: "meta", text: `analysed ${fmtTime(s.analysed_at)} · ${s.counts.wbc} WBC · ${s.counts.rbc} RBC · ${s.counts.platelets} platelets` }),
            el("ul", {}, s.flags.map((f) => el("li", {}, el("strong", { text: f.code.replaceAll("_", " ").toLowerCase() + ": " }), f.message))),
            ...(s.rules_not_evaluated || []).length ? [el("div", { class: "meta", text: "Not evaluated: " + [...new Set(s.rules_not_evaluated.map((e) => e.reason))].join("; ") })] : []),
          el("div", {}, el("a", { class: "button", href: `/ui/slides/${s.slide_id}`, text: "Review →" })))));
      }
      since.addEventListener("change", load);
      load();
    },
  };

  document.addEventListener("DOMContentLoaded", () => {
    showWho();
    document.getElementById("change-key").addEventListener("click", askKey);
  });
  return { api, imageUrl, el, toast, fmtTime, pct, sev, pages, key, askKey };
})();
