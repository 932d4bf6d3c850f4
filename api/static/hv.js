/* HematoVision review pages: session-authenticated fetches (CSRF token on unsafe requests) and the
   list pages. Every id put into a URL goes through encodeURIComponent (seg). */
"use strict";
const HV = (() => {
  const csrfToken = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  /** One path segment: an id from a page, a link or an answer never changes the URL's shape. */
  const seg = (id) => encodeURIComponent(String(id));

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

  function toLogin() {
    window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname));
  }

  /** fetch with the login session (cookie) and, on unsafe requests, the CSRF token; JSON in and out.
      A 401 "unauthorized" (the session ended) goes to the login page. */
  async function api(path, opts = {}) {
    const method = opts.method || "GET";
    const headers = Object.assign({}, opts.headers || {});
    if (method !== "GET" && method !== "HEAD") headers["X-CSRFToken"] = csrfToken();
    if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(opts.json); }
    const r = await fetch(path, { method, headers, body: opts.body, credentials: "same-origin" });
    if (opts.raw) return r;
    const body = await r.json().catch(() => ({}));
    const code = body.error && body.error.code;
    if (r.status === 401 && code === "unauthorized") { toLogin(); }
    if (!r.ok) { const err = new Error((body.error && body.error.message) || r.statusText); err.status = r.status; err.code = code; throw err; }
    return body;
  }

  /** An image from the keyed API as an object URL. */
  async function imageUrl(path) {
    const r = await api(path, { raw: true });
    if (r.status === 401) { toLogin(); }
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
            el("td", {}, el("a", { href: `/ui/batches/${seg(b.id)}`, text: b.name || b.id.slice(0, 8) }), el("div", { class: "muted small", text: b.id })),
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
        try { b = await api(`/api/v1/batches/${seg(batchId)}`); } catch (e) { failRow(tbody, 5, e); return; }
        document.getElementById("batch-title").textContent = b.name || "Batch " + b.id.slice(0, 8);
        document.getElementById("batch-meta").textContent = `${b.jobs.length} slides · submitted ${fmtTime(b.created_at)} · priority ${b.priority} · ${b.state}`;
        tbody.replaceChildren(...b.jobs.map((j) => el("tr", {},
          el("td", {}, j.state === "succeeded" ? el("a", { href: `/ui/slides/${seg(j.slide_id)}`, text: j.filename }) : j.filename,
            j.error ? el("div", { class: "muted small", text: j.error }) : null),
          el("td", {}, el("span", { class: "pill " + j.state, text: j.state }),
            (j.state === "queued" || j.state === "running") && j.stage ? el("div", { class: "muted small", text: j.stage }) : null),
          el("td", {}, progress(j.progress, j.state === "succeeded")),
          el("td", { text: j.duration_s ? j.duration_s.toFixed(1) + " s" : "—" }),
          el("td", {}, j.state === "succeeded" ? el("a", { class: "button", href: `/ui/slides/${seg(j.slide_id)}`, text: "Review" }) : null))));
        if (b.state !== "finished") setTimeout(load, 3000);
      }
      load();
    },

    async flags() {
      const box = document.getElementById("flag-list");
      const since = document.getElementById("since");
      const status = document.getElementById("status");
      const search = document.getElementById("flag-search");
      async function load() {
        const params = new URLSearchParams();
        if (since.value === "all") params.set("since", "all");
        else if (since.value) params.set("since", new Date(Date.now() - Number(since.value) * 3600e3).toISOString());
        if (status && status.value) params.set("status", status.value);
        if (search && search.value.trim()) params.set("q", search.value.trim());
        const q = params.toString() ? "?" + params.toString() : "";
        let doc;
        try { doc = await api("/api/v1/flags" + q); } catch (e) { box.replaceChildren(el("p", { class: "muted", text: "Could not load: " + e.message })); return; }
        const note = document.getElementById("info-only");
        if (note) note.textContent = `${doc.info_only_note || ""}${doc.since && doc.since !== "all" ? " · since " + fmtTime(doc.since) : ""}`;
        if (!doc.slides.length) { box.replaceChildren(el("p", { class: "muted", text: "No flagged slides in this period." })); return; }
        box.replaceChildren(...doc.slides.map((s) => el("article", { class: "card " + s.max_severity, "data-slide": s.slide_id },
          el("div", {}, sev(s.max_severity), el("div", { class: "muted small", text: s.status === "verified" ? `signed off by ${s.verified_by}` : "to do" })),
          el("div", {},
            el("h3", {}, el("a", { href: `/ui/slides/${seg(s.slide_id)}`, text: s.filename })),
            el("div", { class: "meta", text: `analysed ${fmtTime(s.analysed_at)} · ${s.counts.wbc} WBC · ${s.counts.rbc} RBC · ${s.counts.platelets} platelets` }),
            el("ul", {}, s.flags.map((f) => el("li", {}, el("strong", { text: f.code.replaceAll("_", " ").toLowerCase() + ": " }), f.message))),
            ...(s.rules_not_evaluated || []).length ? [el("div", { class: "meta", text: "Not evaluated: " + [...new Set(s.rules_not_evaluated.map((e) => e.reason))].join("; ") })] : []),
          el("div", {}, el("a", { class: "button", href: `/ui/slides/${seg(s.slide_id)}`, text: "Review →" })))));
      }
      since.addEventListener("change", load);
      if (status) status.addEventListener("change", load);
      if (search) { let t = null; search.addEventListener("input", () => { clearTimeout(t); t = setTimeout(load, 300); }); }
      load();
    },
  };

  return { api, imageUrl, el, seg, toast, fmtTime, pct, sev, pages };
})();
