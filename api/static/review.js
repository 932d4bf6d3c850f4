/* Slide review: viewer with cell outlines, differential, flags (each acknowledged with a comment),
   gallery, reclassification, comments, sign-off (an electronic signature: the person re-enters their
   password; a pathologist's second one where needed), amendment, the slide's audit history.
   Every id put into a URL goes through HV.seg (encodeURIComponent). Keys: 1-9 assign the n-th class to the selected cell, the review vocabulary's letters (B blast, S smudge, ...) its terms, U unidentified, N next unidentified cell,
   arrows / J K previous and next cell, Esc clears the selection. */
"use strict";
HV.review = (() => {
  const { api, el, seg, toast, pct, sev, fmtTime } = HV;
  const COLORS = { basophil: "#7c3aed", eosinophil: "#f97316", erythroblast: "#db2777", ig: "#0891b2", lymphocyte: "#2563eb",
    monocyte: "#16a34a", neutrophil: "#eab308", platelet: "#65a30d", blast: "#dc2626", unidentified: "#ffffff" };
  const color = (label) => COLORS[label || "unidentified"] || "#00e5ff";
  const S = { kind: "wbc", slideId: null, cells: [], byId: new Map(), classes: [], vocab: [], report: null, sel: null, viewer: null, overlays: new Map(), readOnly: false, signed: false, awaiting: false, acks: [], comments: [], imgs: new Map(), changed: new Set() };

  const labelOf = (c) => c.label || "unidentified";
  const keyed = () => [...S.classes, "unidentified"];

  /** A cell's picture URL: a plain same-origin image request carrying the session cookie, so the
      browser loads thumbnails lazily (only those scrolled into view) instead of one fetch per cell
      before anything else. */
  const img = (cell) => cell.image_url;

  /** The key shown beside a cell outline and in the legend: 1-9 for the n-th class, U unidentified,
      the vocabulary letter for another review term (classes never differ by colour alone). */
  function keyOf(label) {
    const cls = label || "unidentified";
    if (cls === "unidentified") return "U";
    const i = S.classes.indexOf(cls);
    if (i >= 0) return String(i + 1);
    const t = S.vocab.find((x) => x.code === cls);
    return t && t.key ? t.key.toUpperCase() : cls.charAt(0).toUpperCase();
  }

  function renderStatus() {
    const badge = document.getElementById("status-badge");
    const btn = document.getElementById("signoff");
    const amend = document.getElementById("amend");
    if (amend) amend.hidden = !S.signed;
    const reasonLabel = document.getElementById("signoff-reason-label");
    if (reasonLabel) reasonLabel.hidden = S.awaiting || !(S.report && S.report.differential_sufficient === false);
    const second = document.getElementById("signoff-second");
    if (second) second.hidden = !S.awaiting;
    if (S.awaiting) {
      const first = ((S.report || {}).signatures || [])[0] || {};
      badge.className = "status awaiting";
      badge.textContent = `Awaiting pathologist · reviewed by ${first.name || "?"}`;
      badge.title = ((S.report || {}).pathologist_reasons || []).join("; ");
      btn.disabled = false; btn.textContent = "Sign as pathologist";
    } else if (S.signed) {
      const r = S.report || {};
      badge.className = "status verified";
      const name = r.verified_by || S.meta.verified_by || "";
      const id = r.verified_by_id || S.meta.verified_by_id || "";
      badge.textContent = `${r.result_status === "amended" ? "Amended · " : ""}Verified by ${name}${id ? " (" + id + ")" : ""} · ${fmtTime(r.verified_at || S.meta.verified_at)}`;
      badge.title = (r.signature && r.signature.meaning) || "";
      btn.disabled = true; btn.textContent = "Signed off";
      const census = document.getElementById("census"); if (census) census.disabled = true;
      const hl7 = document.getElementById("dl-hl7");
      if (hl7 && hl7.dataset.href) {
        hl7.href = hl7.dataset.href; hl7.setAttribute("download", ""); hl7.removeAttribute("aria-disabled");
        hl7.textContent = "HL7"; hl7.title = "The HL7 ORU^R01 result message of the signed-off slide";
      }
    } else {
      const open = S.cells.filter((c) => labelOf(c) === "unidentified").length;
      badge.className = "status prelim"; badge.title = "";
      const amended = S.report && S.report.amendment ? ` · amendment v${S.report.amendment.version}` : "";
      badge.textContent = (open ? `Preliminary · ${open} unidentified` : "Preliminary") + amended;
      btn.disabled = false; btn.textContent = "Sign off";
    }
  }

  function renderDifferential() {
    const r = S.report;
    const tbody = document.querySelector("#differential tbody");
    const unid = r.unidentified_percent === undefined || r.unidentified_percent === null ? ""
      : ` · ${r.unidentified} unidentified (${pct(r.unidentified_percent)}% of ${r.counts.wbc_seen} seen, not in n)`;
    const invalid = r.differential_valid === false ? ` — NOT VALID for release until reviewed (${r.differential_invalid_reason || "outside the validated domain"})` : "";
    document.getElementById("diff-n").textContent = `n = ${r.counts.wbc} classified white cells${r.differential_sufficient ? "" : " (insufficient)"}${unid}${invalid}`;
    tbody.replaceChildren(...Object.entries(r.differential).map(([cls, d]) => {
      const [lo, hi] = d.ci95;
      return el("tr", { class: (d.count ? "" : "zero") + (S.changed.has(cls) ? " changed" : ""), "data-class": cls },
        el("td", {}, el("span", { class: "swatch", style: `background:${cls === "unidentified" ? "#98a2b3" : color(cls)}` }), cls),
        el("td", { class: "num", text: String(d.count) }),
        el("td", { class: "num", text: pct(d.percent) }),
        el("td", {}, el("span", { class: "ci" },
          el("span", { class: "ci-bar" }, el("span", { class: "rng", style: `left:${lo}%;width:${Math.max(hi - lo, 0.8)}%` }), el("span", { class: "pt", style: `left:${d.percent}%` })),
          `${pct(lo)}–${pct(hi)}`)));
    }));
    const flags = document.getElementById("flags");
    /* Silence is never a negative result: the rules that could not run are listed under the flags. */
    const notRun = new Map();
    for (const e of r.rules_not_evaluated || []) { if (!notRun.has(e.reason)) notRun.set(e.reason, []); notRun.get(e.reason).push(e.rule); }
    const ackOf = new Map(S.acks.map((a) => [a.code, a]));
    const acked = r.flags.filter((f) => ackOf.has(f.code)).length;
    const ackN = document.getElementById("ack-n");
    if (ackN) ackN.textContent = r.flags.length ? `${acked} of ${r.flags.length} acknowledged` : "";
    flags.replaceChildren(...(r.flags.length ? r.flags.map((f) => el("li", { "data-code": f.code }, sev(f.severity), el("span", { text: f.message }), ackControl(f, ackOf.get(f.code))))
      : [el("li", { class: "muted", text: "No flags raised." })]),
      ...[...notRun].map(([reason, rules]) => el("li", { class: "muted small not-evaluated", text: `Not evaluated: ${rules.join(", ")} (${reason})` })));
    const counts = document.getElementById("counts");
    if (counts) {
      const m = r.model || {};
      counts.replaceChildren(
        el("dt", { text: "White cells classified" }), el("dd", { text: String(r.counts.wbc) }),
        ...estimateRows(r.estimates || {}),
        el("dt", { text: "Nucleated red cells / 100 WBC" }), el("dd", { text: r.nrbc_per_100_wbc === null ? "—" : String(r.nrbc_per_100_wbc) }),
        el("dt", { text: "Unidentified (of white cells seen)" }), el("dd", { text: `${r.unidentified ?? 0}${r.unidentified_percent == null ? "" : " · " + pct(r.unidentified_percent) + "%"}` }),
        ...Object.entries(r.absolute_10e9_per_l || {}).flatMap(([cls, a]) => [
          el("dt", { text: `${cls} (×10⁹/L)` }), el("dd", { text: `${a.value.toFixed(2)} [${a.ci95[0].toFixed(2)}–${a.ci95[1].toFixed(2)}]` })]),
        el("dt", { text: "Cells reclassified" }), el("dd", { text: String(r.reviewed_cells || 0) }),
        el("dt", { text: "Model" }), el("dd", { text: `${m.name} ${m.version}` }),
        el("dt", { text: "Flag rules" }), el("dd", { text: String(r.rules_version), title: r.rules_sha256 ? `SHA-256 ${r.rules_sha256}` : "" }));
    }
    const rare = document.getElementById("rare-event");
    if (rare) rare.textContent = r.rare_event_statement || "";
    const map = document.getElementById("sampling-map");
    const samp = r.sampling || null;
    if (map && samp && samp.fields && samp.fields.length) {
      map.hidden = false;
      if (!map.getAttribute("src")) map.setAttribute("src", `/api/v1/slides/${seg(S.slideId)}/sampling-map`);
      document.getElementById("sampling-text").textContent =
        `${samp.method}: ${samp.fields_read} fields, ${samp.area_read_mm2} mm² read of ${samp.monolayer_area_mm2} mm² of evaluable monolayer.`;
    }
    renderStatus();
  }

  /** A flag's acknowledgement: who acknowledged it and their comment, or a small form to do it. */
  function ackControl(f, a) {
    if (a) return el("p", { class: "ack done", text: `Acknowledged by ${a.by} · ${fmtTime(a.at)}: ${a.comment}` });
    if (S.readOnly) return el("p", { class: "ack muted", text: "Not acknowledged" });
    const input = el("input", { type: "text", maxlength: 2000, required: true, "aria-label": `Comment acknowledging ${f.code}`, placeholder: "comment (required)" });
    return el("form", { class: "ack-form", "data-ack": f.code, onsubmit: async (ev) => {
      ev.preventDefault();
      if (!input.value.trim()) { toast("An acknowledgement needs a comment.", true); input.focus(); return; }
      try {
        const res = await api(`/api/v1/slides/${seg(S.slideId)}/flags/${seg(f.code)}/ack`, { method: "POST", json: { comment: input.value } });
        S.acks = S.acks.filter((x) => x.code !== f.code).concat([res.acknowledgement]);
        renderDifferential(); loadAudit(); toast(`${f.code} acknowledged.`);
      } catch (e) { toast(e.message, true); }
    } }, input, el("button", { type: "submit", text: "Acknowledge" }));
  }

  function renderComments() {
    const box = document.getElementById("comments");
    if (!box) return;
    document.getElementById("comment-n").textContent = S.comments.length ? String(S.comments.length) : "";
    box.replaceChildren(...(S.comments.length ? S.comments.map((c) => el("li", {},
      el("span", { class: "muted", text: `${fmtTime(c.at)} · ` }), el("strong", { text: c.by }),
      c.cell_id ? el("button", { type: "button", class: "link", text: ` cell ${c.cell_id}`, onclick: () => select(c.cell_id, true) }) : null,
      el("span", { text: `: ${c.text}` })))
      : [el("li", { class: "muted", text: "No comments yet." })]));
    const form = document.getElementById("comment-form");
    if (form) for (const x of form.elements) x.disabled = S.signed;
  }

  async function addComment(ev) {
    ev.preventDefault();
    const text = document.getElementById("comment-text");
    const onCell = document.getElementById("comment-on-cell").checked;
    if (onCell && !S.sel) { toast("Select a cell first, or untick 'on the selected cell'.", true); return; }
    const path = onCell ? `/api/v1/cells/${seg(S.sel)}/comments` : `/api/v1/slides/${seg(S.slideId)}/comments`;
    try {
      const res = await api(path, { method: "POST", json: { text: text.value } });
      S.comments.push(res.comment); text.value = ""; renderComments(); loadAudit(); toast("Comment added.");
    } catch (e) { toast(e.message, true); }
  }

  /** The amendment's reason, from the amend dialog (null: cancelled). */
  function askReason() {
    const dlg = document.getElementById("amend-dialog");
    const input = document.getElementById("amend-reason");
    input.value = "";
    return new Promise((resolve) => {
      const cancel = document.getElementById("amend-cancel");
      const onCancel = () => dlg.close("cancel");
      cancel.addEventListener("click", onCancel, { once: true });
      dlg.addEventListener("close", () => {
        cancel.removeEventListener("click", onCancel);
        resolve(dlg.returnValue === "amend" && input.value.trim() ? input.value : null);
      }, { once: true });
      dlg.returnValue = "";
      dlg.showModal();
      input.focus();
    });
  }

  async function amendReport() {
    const reason = await askReason();
    if (!reason) return;
    try {
      const res = await api(`/api/v1/slides/${seg(S.slideId)}/amend`, { method: "POST", json: { reason } });
      toast(`Amended: version ${res.version} is open for review.`);
      await reload();
    } catch (e) { toast(e.message, true); loadAudit(); }
  }

  /* The smear estimates (value, 95 % CI, unit), in place of raw red-cell and platelet object counts. */
  function estimateRows(est) {
    const rows = [];
    const ci = (c) => (c ? ` [${c[0]}–${c[1]}]` : "");
    const w = est.wbc;
    if (w && w.value !== null && w.value !== undefined)
      rows.push(el("dt", { text: "WBC estimate (×10⁹/L)" }), el("dd", { text: `${w.value}${ci(w.ci95)}`, title: `${w.cells} white cells in ${w.area_mm2} mm² of monolayer (${w.per_mm2}/mm²) × ${w.factor_10e9_per_l_per_cell_mm2}` }));
    const p = est.platelets;
    if (p && p.per_100_rbc !== null && p.per_100_rbc !== undefined) {
      if (p.unit === "10^9/L") rows.push(el("dt", { text: "Platelet estimate (×10⁹/L)" }), el("dd", { text: `${p.value}${ci(p.ci95)}` }));
      rows.push(el("dt", { text: "Platelets / 100 RBC" }), el("dd", { text: `${p.per_100_rbc}${ci(p.per_100_rbc_ci95)}`, title: `${p.platelets} platelets, ${p.rbc} red cells in ${p.fields} fields (${p.per_field} per field)` }));
    }
    return rows;
  }

  function renderGallery() {
    const box = document.getElementById("gallery");
    const groups = new Map(keyed().map((k) => [k, []]));
    for (const c of S.cells) { if (!groups.has(labelOf(c))) groups.set(labelOf(c), []); groups.get(labelOf(c)).push(c); }
    const parts = [];
    for (const [cls, cells] of groups) {
      if (!cells.length) continue;
      parts.push(el("h3", {}, el("span", { class: "swatch", style: `background:${cls === "unidentified" ? "#98a2b3" : color(cls)}` }), `${cls}`, el("span", { class: "muted small", text: `${cells.length}` })));
      parts.push(el("div", { class: "thumbs" }, cells.map((c) => {
        const im = el("img", { alt: `cell ${c.id} (${labelOf(c)})`, width: 72, height: 72, loading: "lazy", decoding: "async", src: img(c) });
        return el("button", { type: "button", class: "thumb" + (c.reviewed ? " reviewed" : "") + (S.sel === c.id ? " sel" : ""), "data-cell": c.id, title: `${labelOf(c)}${c.probability ? " · p=" + c.probability.toFixed(2) : ""}`, onclick: () => select(c.id, true) },
          im, el("span", { class: "tag", text: c.probability ? c.probability.toFixed(2) : "—" }));
      })));
    }
    box.replaceChildren(...(parts.length ? parts : [el("p", { class: "muted", text: S.kind === "rbc" ? "No classified red cells on this slide." : "No white cells on this slide." })]));
  }

  function renderSelected() {
    const box = document.getElementById("selected");
    const c = S.byId.get(S.sel);
    if (!c) { box.hidden = true; return; }
    box.hidden = false;
    document.getElementById("sel-img").src = img(c);
    document.getElementById("sel-title").textContent = `Cell ${c.id}: ${labelOf(c)}`;
    const orig = c.reviewed ? ` · model said ${c.model_label || "unidentified"}` : (c.probability ? ` · model confidence ${c.probability.toFixed(2)}` : "");
    document.getElementById("sel-sub").textContent = orig + (S.readOnly ? " · signed off (read-only)" : "");
    document.getElementById("class-keys").replaceChildren(...keyed().map((cls, i) => el("button", {
      type: "button", class: labelOf(c) === cls ? "current" : "", disabled: S.readOnly, "data-label": cls, onclick: () => assign(cls) },
    el("kbd", { text: cls === "unidentified" ? "U" : String(i + 1) }), cls)));
    /* The lab's review vocabulary beyond the model's classes: a menu, and each term's letter key. */
    const menu = document.getElementById("vocab-menu");
    if (menu) {
      const terms = S.vocab.filter((t) => !S.classes.includes(t.code));
      menu.disabled = S.readOnly;
      menu.replaceChildren(el("option", { value: "", text: "— choose —" }), ...terms.map((t) => el("option", {
        value: t.code, text: `${t.name}${t.key ? " (" + t.key.toUpperCase() + ")" : ""}${t.in_differential ? "" : " · not in differential"}` })));
      menu.value = terms.some((t) => t.code === labelOf(c)) ? labelOf(c) : "";
      menu.onchange = () => { if (menu.value) assign(menu.value); };
    }
  }

  function select(id, pan = false) {
    S.sel = id;
    for (const [cid, o] of S.overlays) o.classList.toggle("sel", cid === id);
    document.querySelectorAll(".thumb").forEach((t) => t.classList.toggle("sel", Number(t.dataset.cell) === id));
    const c = S.byId.get(id);
    if (c && pan && S.viewer && S.viewer.world.getItemCount()) {
      const [x0, y0, x1, y1] = c.bbox;
      S.viewer.viewport.panTo(S.viewer.viewport.imageToViewportCoordinates((x0 + x1) / 2, (y0 + y1) / 2));
    }
    renderSelected();
  }

  function step(delta) {
    if (!S.cells.length) return;
    const i = S.cells.findIndex((c) => c.id === S.sel);
    const j = i < 0 ? 0 : (i + delta + S.cells.length) % S.cells.length;
    select(S.cells[j].id, true);
  }

  function nextUnidentified() {
    const i = S.cells.findIndex((c) => c.id === S.sel);
    const order = [...S.cells.slice(i + 1), ...S.cells.slice(0, i + 1)];
    const c = order.find((x) => labelOf(x) === "unidentified");
    if (c) select(c.id, true); else toast("No unidentified cells left.");
  }

  async function assign(label) {
    const c = S.byId.get(S.sel);
    if (!c) { toast("Select a cell first (click it in the slide or the gallery)."); return; }
    if (S.readOnly) { toast(S.awaiting ? "This slide awaits a pathologist's signature and is read-only." : "This slide is signed off and read-only.", true); return; }
    if (labelOf(c) === label) return;
    const before = S.report.differential;
    try {
      const res = await api(`/api/v1/cells/${seg(c.id)}/label`, { method: "POST", json: { label } });
      if (!c.reviewed) { c.reviewed = true; c.model_label = c.model_label ?? c.label; }
      c.label = res.cell.label;
      S.changed = new Set(Object.keys(res.differential).filter((k) => !before[k] || before[k].count !== res.differential[k].count));
      Object.assign(S.report, res);
      const o = S.overlays.get(c.id);
      if (o) { o.style.setProperty("--c", color(c.label)); o.firstChild.textContent = keyOf(c.label); o.title = `cell ${c.id}: ${labelOf(c)}`; }
      renderDifferential(); renderGallery(); renderSelected(); loadAudit();
      toast(`Cell ${c.id} → ${label}${res.effect && res.effect.message ? " · " + res.effect.message : ""}`);
    } catch (e) { toast(e.message, true); if (e.status === 409) await reload(); }
  }

  /** The password of the electronic signature, from the sign-off dialog (null: cancelled). */
  function askPassword() {
    const dlg = document.getElementById("signoff-dialog");
    const input = document.getElementById("signoff-password");
    input.value = "";
    return new Promise((resolve) => {
      const cancel = document.getElementById("signoff-cancel");
      const onCancel = () => dlg.close("cancel");
      cancel.addEventListener("click", onCancel, { once: true });
      dlg.addEventListener("close", () => {
        cancel.removeEventListener("click", onCancel);
        const pw = input.value; input.value = "";
        resolve(dlg.returnValue === "sign" && pw ? pw : null);
      }, { once: true });
      dlg.returnValue = "";
      dlg.showModal();
      input.focus();
    });
  }

  async function signOff() {
    const open = S.cells.filter((c) => labelOf(c) === "unidentified").length;
    if (open && !S.awaiting) { toast(`${open} unidentified cell(s): classify them before signing off (N selects the next one).`, true); nextUnidentified(); return; }
    const reasonBox = document.getElementById("signoff-reason");
    if (reasonBox) reasonBox.value = "";
    const password = await askPassword();
    if (!password) return;
    const json = { password };
    if (reasonBox && reasonBox.value.trim()) json.reason = reasonBox.value;
    try {
      const res = await api(`/api/v1/slides/${seg(S.slideId)}/signoff`, { method: "POST", json });
      await reload();
      toast(res.result_status === "awaiting_pathologist" ? "Signed: the slide now awaits a pathologist's signature." : "Signed off.");
    } catch (e) { toast(e.message, true); loadAudit(); }
  }

  /** "Count all cells": queue the slide again as a whole-smear census (a new job; the results shown
      stay until the census has stored its own). */
  async function queueCensus() {
    const btn = document.getElementById("census");
    if (!window.confirm("Count all cells of this slide (whole-smear census)? The current results stay until the census is stored; reclassifications made so far are replaced with it.")) return;
    btn.disabled = true;
    try {
      const res = await api(`/api/v1/slides/${seg(S.slideId)}/census`, { method: "POST", json: {} });
      btn.textContent = "Census queued";
      toast(`Census queued (job ${res.id.slice(0, 8)}): the results are replaced when it has finished.`);
      loadAudit();
    } catch (e) { btn.disabled = false; toast(e.message, true); }
  }

  const ACTION_TEXT = { census: "queued a census (count all cells)", acknowledge: "acknowledged", comment: "commented", amend: "amended", reclassify: "reclassified", signoff: "signed off", export: "exported", cancel: "cancelled", read: "read" };

  /** The slide's audit history (reads of the report are counted, not listed). */
  async function loadAudit() {
    const box = document.getElementById("audit");
    if (!box) return;
    let doc;
    try { doc = await api(`/api/v1/slides/${seg(S.slideId)}/audit`); } catch (e) { box.replaceChildren(el("li", { class: "muted", text: "Could not load: " + e.message })); return; }
    const shown = doc.entries.filter((e) => e.action !== "read" || e.outcome !== "allowed");
    const reads = doc.entries.length - shown.length;
    document.getElementById("audit-n").textContent = `${shown.length} ${shown.length === 1 ? "entry" : "entries"} · ${reads} ${reads === 1 ? "read" : "reads"}`;
    box.replaceChildren(...(shown.length ? shown.slice().reverse().map((e) => {
      const d = e.detail || {};
      let what = ACTION_TEXT[e.action] || e.action;
      if (e.action === "reclassify") what += ` cell ${d.cell_id}: ${d.from || "unidentified"} → ${d.to}`;
      if (e.action === "signoff" && d.meaning) what += ` (${d.meaning})`;
      if (e.action === "acknowledge" && d.code) what += ` ${d.code}`;
      if (e.action === "amend" && d.amend_reason) what += `: ${d.amend_reason}`;
      if (e.action === "export" && d.format) what += ` ${d.format.toUpperCase()}`;
      if (e.outcome !== "allowed") what += ` — ${e.outcome} (${e.status}${d.reason ? ": " + d.reason : ""})`;
      return el("li", { class: e.outcome }, el("span", { class: "muted", text: fmtTime(e.at) + " · " }), el("strong", { text: e.actor }), " " + what);
    }) : [el("li", { class: "muted", text: "No reclassification, sign-off or export yet." })]));
  }

  function onKey(ev) {
    if (ev.target.closest && ev.target.closest("input, textarea, select, dialog")) return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key;
    if (/^[1-9]$/.test(k)) { const cls = S.classes[Number(k) - 1]; if (cls) { assign(cls); ev.preventDefault(); } }
    else if (k === "u" || k === "U") { assign("unidentified"); ev.preventDefault(); }
    else if (k === "n" || k === "N") { nextUnidentified(); ev.preventDefault(); }
    else if (k === "ArrowRight" || k === "j") { step(1); ev.preventDefault(); }
    else if (k === "ArrowLeft" || k === "k") { step(-1); ev.preventDefault(); }
    else if (k === "Escape") { select(null); }
    else { const t = S.vocab.find((x) => x.key && x.key.toLowerCase() === k.toLowerCase()); if (t) { assign(t.code); ev.preventDefault(); } }
  }

  /** The DZI descriptor is fetched here and handed over as an inline DZI tile source; tiles are
      plain image requests that carry the session cookie (same origin). */
  async function dziSource() {
    const r = await api(`/api/v1/slides/${seg(S.slideId)}/dzi`, { raw: true });
    if (!r.ok) throw new Error("slide image: HTTP " + r.status);
    const x = new DOMParser().parseFromString(await r.text(), "application/xml");
    const im = x.getElementsByTagName("Image")[0], sz = x.getElementsByTagName("Size")[0];
    return { Image: { xmlns: "http://schemas.microsoft.com/deepzoom/2008", Url: `/api/v1/slides/${seg(S.slideId)}/tiles/`,
      Format: im.getAttribute("Format"), Overlap: im.getAttribute("Overlap"), TileSize: im.getAttribute("TileSize"),
      Size: { Width: sz.getAttribute("Width"), Height: sz.getAttribute("Height") } } };
  }

  async function startViewer(prefixUrl) {
    const legend = document.getElementById("legend");
    legend.replaceChildren(...keyed().map((cls) => el("span", {}, el("i", { style: `background:${cls === "unidentified" ? "#fff;border:1px solid #98a2b3" : color(cls)}` }), el("kbd", { class: "legend-key", text: keyOf(cls) }), " " + cls)));
    S.viewer = OpenSeadragon({
      element: document.getElementById("viewer"), prefixUrl, showNavigator: true, navigatorPosition: "TOP_RIGHT",
      tileSources: await dziSource(),
      gestureSettingsMouse: { clickToZoom: false }, maxZoomPixelRatio: 2, visibilityRatio: 0.8, crossOriginPolicy: false,
    });
    S.viewer.addHandler("open", () => {
      for (const c of S.cells) {
        const [x0, y0, x1, y1] = c.bbox;
        const e = el("div", { class: "cellbox", "data-cell": c.id, title: `cell ${c.id}: ${labelOf(c)}` },
          el("span", { class: "cellkey", "aria-hidden": "true", text: keyOf(c.label) }));
        e.style.setProperty("--c", color(c.label));
        S.viewer.addOverlay({ element: e, location: S.viewer.viewport.imageToViewportRectangle(x0, y0, x1 - x0, y1 - y0) });
        new OpenSeadragon.MouseTracker({ element: e, clickHandler: () => select(c.id) });
        S.overlays.set(c.id, e);
      }
      if (S.sel) select(S.sel);
    });
    S.viewer.addHandler("open-failed", (ev) => toast("Slide image: " + (ev.message || "could not be opened"), true));
  }

  async function reload(opts = {}) {
    const [meta, report] = await Promise.all([api(`/api/v1/slides/${seg(S.slideId)}/cells?kind=${S.kind}`), api(`/api/v1/slides/${seg(S.slideId)}/report`)]);
    S.meta = meta; S.report = report; S.cells = meta.cells; S.classes = meta.classes.slice(0, 9); S.vocab = meta.vocabulary || [];
    S.byId = new Map(S.cells.map((c) => [c.id, c]));
    S.signed = Boolean(meta.verified_at);
    S.awaiting = !S.signed && (report.result_status || meta.result_status) === "awaiting_pathologist";
    S.readOnly = S.signed || S.awaiting;
    S.acks = report.flag_acknowledgements || []; S.comments = report.comments || [];
    document.getElementById("slide-title").textContent = meta.filename;
    const bl = document.getElementById("batch-link"); if (bl) { bl.href = `/ui/batches/${seg(meta.batch_id)}`; bl.textContent = "batch " + meta.batch_id.slice(0, 8); }
    document.getElementById("slide-meta").textContent = `${meta.width}×${meta.height} px · ${meta.mpp} µm/px · analysed ${fmtTime(report.analysed_at)} · model ${report.model.name} ${report.model.version}`;
    renderDifferential(); renderSelected(); renderComments(); loadAudit();
    if (!opts.deferGallery) renderGallery();
  }

  async function start(slideId, opts) {
    S.slideId = slideId;
    S.kind = (opts && opts.kind) || "wbc"; /* "rbc": the red-cell gallery (classified red cells, red-cell classes) */
    document.addEventListener("keydown", onKey);
    document.getElementById("signoff").addEventListener("click", signOff);
    const amendBtn = document.getElementById("amend");
    if (amendBtn) amendBtn.addEventListener("click", amendReport);
    const commentForm = document.getElementById("comment-form");
    if (commentForm) commentForm.addEventListener("submit", addComment);
    const census = document.getElementById("census"); if (census) census.addEventListener("click", queueCensus);
    /* The viewer first: the gallery (one button per cell) is built after it has started. */
    try { await reload({ deferGallery: true }); } catch (e) { toast(e.message, true); document.getElementById("slide-title").textContent = e.status === 409 ? "Not analysed yet" : "Slide not available"; return; }
    if (opts.viewer && window.OpenSeadragon) {
      try { await startViewer(opts.prefixUrl); } catch (e) { toast(e.message, true); }
    }
    renderGallery();
    document.body.dataset.readyMs = String(Math.round(performance.now()));
    document.body.dataset.ready = "1";
  }

  return { start, state: S };
})();
