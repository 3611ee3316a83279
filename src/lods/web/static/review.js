/* The review screen of one study (templates/review/study.html).
 *
 * The page carries the study's review state (#rv-state, the model of
 * GET /api/review/studies/{uid}) and its messages (#rv-text). A radiologist's page claims
 * the study on load; every decision, added finding, draft, signature and amendment goes
 * to /api/review with the CSRF header and answers the new state, which is drawn again.
 * AI boxes are drawn over the image in image pixels: solid when the AI is sure, dashed
 * when it is doubtful; the reader's own boxes (amended or added) in another colour.
 */
(function () {
  "use strict";
  const root = document.getElementById("review");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const T = JSON.parse($("rv-text").textContent);
  let S = JSON.parse($("rv-state").textContent);
  const csrf = root.dataset.csrf;
  const api = "/api/review/studies/" + encodeURIComponent(S.study.uid);
  const SVG = "http://www.w3.org/2000/svg";

  const stage = $("rv-stage"), layer = $("rv-layer"), img = $("rv-image");
  const svg = $("rv-overlay-svg"), boxes = $("rv-boxes"), heat = $("rv-heat");
  const draftBox = $("rv-draft-box");
  const wc = $("rv-wc"), ww = $("rv-ww"), preset = $("rv-preset");

  // What the viewer shows and what the reader is doing.
  const V = {
    image: 0, frame: 1, zoom: 1, panX: 0, panY: 0, fit: 1, loaded: "", size: 0,
    overlay: true, heat: false, selected: null,
    draw: null,        // null | {kind: "add"} | {kind: "amend", finding: id}
    pending: null,     // the box just drawn: {image, frame, box: [x0, y0, x1, y1]}
    defaults: {},
  };

  function fmt(key, values) {
    let text = T[key] || key;
    Object.keys(values || {}).forEach(function (k) { text = text.split("{" + k + "}").join(values[k]); });
    return text;
  }
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (attrs[k] !== null && attrs[k] !== undefined && attrs[k] !== false) node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }
  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }
  function findingById(id) { return S.findings.find(function (f) { return f.id === id; }) || null; }
  function imageIndexOf(uid) { return S.images.findIndex(function (i) { return i.sop_instance_uid === uid; }); }
  function current() { return S.images[V.image]; }
  function editable() { return !!(S.you && S.you.editable); }

  // --- messages -----------------------------------------------------------------------------

  // Errors show at the top of the panel and, for the report, next to its buttons too.
  function showError(message, near) {
    const box = $("rv-alert");
    box.textContent = message; box.hidden = false;
    $("rv-msg").hidden = true;
    const inline = near ? $(near) : null;
    if (inline) { inline.textContent = message; inline.hidden = false; }
  }
  let messageTimer = null;
  function showMessage(message) {
    $("rv-alert").hidden = true;
    document.querySelectorAll(".rv-inline-error").forEach(function (node) { node.hidden = true; });
    const box = $("rv-msg");
    box.textContent = message; box.hidden = !message;
    clearTimeout(messageTimer);
    messageTimer = setTimeout(function () { box.hidden = true; }, 4000);
  }

  // --- talking to /api/review -------------------------------------------------------------------

  async function call(method, path, body) {
    const options = { method: method, credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Accept": "application/json" } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(api + path, options);
    let data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    if (!response.ok) {
      const detail = data && data.detail;
      let message = response.status + " " + response.statusText;
      if (typeof detail === "string") message = detail;
      else if (Array.isArray(detail)) message = detail.map(function (d) { return d.msg; }).join("; ");
      throw new Error(message);
    }
    return data;
  }

  // Actions run one after another, in the order the reader made them.
  let queue = Promise.resolve();
  function act(method, path, body, done, near) {
    const run = async function () {
      root.setAttribute("aria-busy", "true");
      try {
        S = await call(method, path, body);
        showMessage(done || "");
        render();
        return true;
      } catch (err) {
        showError(err.message, near);
        return false;
      } finally {
        root.removeAttribute("aria-busy");
      }
    };
    queue = queue.then(run, run);
    return queue;
  }

  // --- the viewer ---------------------------------------------------------------------------

  function windowParam() {
    const c = parseFloat(wc.value), w = parseFloat(ww.value);
    return (isFinite(c) && isFinite(w) && w >= 1) ? c + "," + w : null;
  }

  function layout() {
    const image = current();
    if (!image) return;
    const sw = stage.clientWidth, sh = stage.clientHeight;
    V.fit = Math.min(sw / image.columns, sh / image.rows);
    const w = image.columns * V.fit, h = image.rows * V.fit;
    layer.style.width = w + "px";
    layer.style.height = h + "px";
    layer.style.left = (sw - w) / 2 + "px";
    layer.style.top = (sh - h) / 2 + "px";
    layer.style.transform = "translate(" + V.panX + "px, " + V.panY + "px) scale(" + V.zoom + ")";
    svg.setAttribute("viewBox", "0 0 " + image.columns + " " + image.rows);
    $("rv-zoom-level").textContent = Math.round(V.zoom * 100) + " %";
  }

  function imageUrl(size) {
    const image = current();
    const base = image.frames > 1 ? image.url + "/frames/" + V.frame + "/rendered" : image.url + "/rendered";
    const params = new URLSearchParams({ accept: "image/png", viewport: size + "," + size });
    const w = windowParam();
    if (w) params.set("window", w);
    return base + "?" + params.toString();
  }

  function wantedSize() {
    const image = current();
    const need = Math.max(image.columns, image.rows) * V.fit * (window.devicePixelRatio || 1) * Math.max(1, V.zoom);
    return Math.min(2048, Math.max(256, Math.ceil(need / 256) * 256));
  }

  function load(force) {
    const image = current();
    if (!image) return;
    const size = wantedSize();
    const url = imageUrl(size);
    if (!force && url === V.loaded) return;
    V.loaded = url; V.size = size;
    $("rv-viewer-status").textContent = T.loading || "";
    img.src = url;
  }
  img.addEventListener("load", function () { $("rv-viewer-status").textContent = ""; });
  img.addEventListener("error", function () { $("rv-viewer-status").textContent = T.image_error || ""; });

  function showImage(index, frame) {
    if (index < 0 || index >= S.images.length) return;
    if (index !== V.image || (frame || 1) !== V.frame) {
      if (V.pending && V.pending.image !== index) clearPending();
    }
    V.image = index;
    V.frame = Math.max(1, Math.min(S.images[index].frames, frame || 1));
    $("rv-frame").value = V.frame;
    $("rv-frame").max = S.images[index].frames;
    $("rv-frame-control").hidden = S.images[index].frames <= 1;
    $("rv-position").textContent = fmt("image_of", { n: index + 1, total: S.images.length });
    document.querySelectorAll(".rv-thumb").forEach(function (b) {
      b.setAttribute("aria-pressed", String(Number(b.dataset.index) === index));
    });
    layout();
    load(false);
    renderOverlay();
  }

  function zoomTo(value) {
    V.zoom = Math.max(0.25, Math.min(16, value));
    if (V.zoom <= 1) { V.panX = 0; V.panY = 0; }
    layout();
    if (wantedSize() > V.size) load(false);
    renderOverlay();
  }
  function resetView() { V.zoom = 1; V.panX = 0; V.panY = 0; layout(); renderOverlay(); }

  // Image pixels of a mouse position (the overlay is exactly the image, zoomed and panned).
  function toImage(event) {
    const image = current();
    const r = svg.getBoundingClientRect();
    const x = (event.clientX - r.left) / r.width * image.columns;
    const y = (event.clientY - r.top) / r.height * image.rows;
    return { x: Math.max(0, Math.min(image.columns, x)), y: Math.max(0, Math.min(image.rows, y)) };
  }

  // --- boxes and heatmaps -------------------------------------------------------------------

  function onThisImage(item) {
    const image = current();
    return image && item.sop_instance_uid === image.sop_instance_uid && (!item.frame || item.frame === V.frame);
  }

  function drawBox(box, cls, label, dashed, findingId) {
    const image = current();
    const unit = image.columns / (layer.clientWidth * V.zoom || 1);  // image pixels per screen pixel
    const rect = svgEl("rect", {
      x: box[0], y: box[1], width: box[2] - box[0], height: box[3] - box[1],
      "class": cls, "stroke-width": 2 * unit,
    });
    if (dashed) rect.setAttribute("stroke-dasharray", (8 * unit) + " " + (5 * unit));
    if (findingId) rect.dataset.finding = findingId;
    boxes.appendChild(rect);
    if (label) {
      const size = 13 * unit;
      const above = box[1] - 4 * unit > size;
      const text = svgEl("text", {
        x: box[0] + 2 * unit, y: above ? box[1] - 4 * unit : box[1] + size + 2 * unit,
        "font-size": size, "class": cls + " label",
      });
      text.textContent = label;
      boxes.appendChild(text);
    }
  }

  function renderOverlay() {
    boxes.textContent = "";
    heat.textContent = "";
    const image = current();
    if (!image) return;
    if (V.overlay) {
      S.findings.forEach(function (f) {
        if (!f.box || !onThisImage(f)) return;
        const d = f.decision;
        const cls = "rv-box ai " + f.certainty + (d ? " decided-" + d.decision : "") + (V.selected === f.id ? " selected" : "");
        drawBox(f.box, cls, f.label + " " + f.score.toFixed(2), f.certainty !== "sure", f.id);
        if (d && d.decision === "amend" && d.box) drawBox(d.box, "rv-box human amended", T.amended_box, false, f.id);
      });
      S.added.forEach(function (a) {
        if (a.box && onThisImage(a)) drawBox(a.box, "rv-box human added", a.code ? a.code.meaning : "", false, null);
      });
    }
    const heatmaps = S.findings.filter(function (f) { return f.heatmap_url && f.sop_instance_uid === image.sop_instance_uid; });
    $("rv-heat-control").hidden = heatmaps.length === 0;
    if (V.heat) {
      heatmaps.filter(onThisImage).forEach(function (f) {
        const node = svgEl("image", {
          x: 0, y: 0, width: image.columns, height: image.rows, preserveAspectRatio: "none",
          filter: "url(#rv-heat-filter)", opacity: "0.55", "class": "rv-heatmap",
        });
        node.setAttribute("href", f.heatmap_url);
        heat.appendChild(node);
      });
    }
    if (V.pending && V.pending.image === V.image && V.pending.frame === V.frame) {
      const b = V.pending.box;
      const unit = image.columns / (layer.clientWidth * V.zoom || 1);
      draftBox.setAttribute("x", b[0]); draftBox.setAttribute("y", b[1]);
      draftBox.setAttribute("width", b[2] - b[0]); draftBox.setAttribute("height", b[3] - b[1]);
      draftBox.setAttribute("stroke-width", 2 * unit);
      draftBox.setAttribute("stroke-dasharray", (4 * unit) + " " + (3 * unit));
      draftBox.setAttribute("visibility", "visible");
    } else if (!drag || drag.kind !== "draw") {
      draftBox.setAttribute("visibility", "hidden");
    }
  }

  // --- mouse: window/level, pan, draw ------------------------------------------------------------

  async function storedWindow() {
    const image = current();
    if (V.defaults[image.sop_instance_uid]) return V.defaults[image.sop_instance_uid];
    const first = function (ds, tag) { const v = ds[tag] && ds[tag].Value; return v ? Number(v[0]) : NaN; };
    let result = { center: 128, width: 256 };
    try {
      const response = await fetch(image.url + "/metadata", { headers: { Accept: "application/dicom+json" } });
      const ds = (await response.json())[0];
      const c = first(ds, "00281050"), w = first(ds, "00281051");
      if (isFinite(c) && isFinite(w) && w >= 1) {
        result = { center: c, width: w };
      } else {
        const bits = first(ds, "00280101") || 8;
        const slope = first(ds, "00281053") || 1, intercept = first(ds, "00281052") || 0;
        const signed = first(ds, "00280103") === 1;
        const low = signed ? -Math.pow(2, bits - 1) : 0, range = Math.pow(2, bits);
        result = { center: (low + range / 2) * slope + intercept, width: range * slope };
      }
    } catch (err) { /* keep the generic default */ }
    V.defaults[image.sop_instance_uid] = result;
    return result;
  }

  let drag = null;
  stage.addEventListener("mousedown", async function (e) {
    if (e.button !== 0 || !current()) return;
    e.preventDefault();
    if (V.draw) {
      if (V.draw.kind === "amend") {
        const f = findingById(V.draw.finding);
        if (!f || !f.sop_instance_uid) return;
      }
      const p = toImage(e);
      drag = { kind: "draw", start: p, end: p };
      updateDraft();
      return;
    }
    const target = e.target;
    if (target && target.dataset && target.dataset.finding) {
      select(Number(target.dataset.finding), false);
      return;
    }
    if (e.shiftKey || $("rv-tool").value === "pan") {
      drag = { kind: "pan", x: e.clientX, y: e.clientY, panX: V.panX, panY: V.panY };
      return;
    }
    drag = { kind: "wl", x: e.clientX, y: e.clientY, pending: true };
    let c = parseFloat(wc.value), w = parseFloat(ww.value);
    if (!(isFinite(c) && isFinite(w))) { const d = await storedWindow(); c = d.center; w = d.width; }
    if (drag && drag.kind === "wl") { drag.center = c; drag.width = w; drag.pending = false; }
  });

  function updateDraft() {
    const a = drag.start, b = drag.end;
    const image = current();
    const unit = image.columns / (layer.clientWidth * V.zoom || 1);
    draftBox.setAttribute("x", Math.min(a.x, b.x));
    draftBox.setAttribute("y", Math.min(a.y, b.y));
    draftBox.setAttribute("width", Math.abs(b.x - a.x));
    draftBox.setAttribute("height", Math.abs(b.y - a.y));
    draftBox.setAttribute("stroke-width", 2 * unit);
    draftBox.setAttribute("stroke-dasharray", (4 * unit) + " " + (3 * unit));
    draftBox.setAttribute("visibility", "visible");
  }

  window.addEventListener("mousemove", function (e) {
    if (!drag) return;
    if (drag.kind === "draw") { drag.end = toImage(e); updateDraft(); return; }
    if (drag.kind === "pan") {
      V.panX = drag.panX + (e.clientX - drag.x);
      V.panY = drag.panY + (e.clientY - drag.y);
      layout();
      return;
    }
    if (drag.pending) return;
    const scale = Math.max(drag.width / 256, 0.01);
    ww.value = Math.max(1, Math.round((drag.width + (e.clientX - drag.x) * scale) * 100) / 100);
    wc.value = Math.round((drag.center + (e.clientY - drag.y) * scale) * 100) / 100;
    preset.value = "";
  });

  window.addEventListener("mouseup", function (e) {
    if (!drag) return;
    const done = drag;
    drag = null;
    if (done.kind === "draw") {
      done.end = toImage(e);
      const x0 = Math.min(done.start.x, done.end.x), x1 = Math.max(done.start.x, done.end.x);
      const y0 = Math.min(done.start.y, done.end.y), y1 = Math.max(done.start.y, done.end.y);
      const image = current();
      const least = Math.max(2, Math.min(image.columns, image.rows) / 200);
      if (x1 - x0 >= least && y1 - y0 >= least) {
        const r = function (v) { return Math.round(v * 10) / 10; };
        V.pending = { image: V.image, frame: V.frame, box: [r(x0), r(y0), r(x1), r(y1)] };
        $("rv-draw-banner").textContent = T.box_drawn;
      } else {
        V.pending = null;
      }
      renderOverlay();
      return;
    }
    if (done.kind === "wl" && !done.pending && windowParam() !== null) load(false);
  });

  stage.addEventListener("wheel", function (e) {
    e.preventDefault();
    zoomTo(V.zoom * (e.deltaY < 0 ? 1.2 : 1 / 1.2));
  }, { passive: false });
  window.addEventListener("resize", function () { layout(); renderOverlay(); });

  // --- findings, decisions, added findings ------------------------------------------------------

  function select(id, show) {
    V.selected = id;
    const f = findingById(id);
    if (f && show !== false && f.sop_instance_uid) {
      const index = imageIndexOf(f.sop_instance_uid);
      if (index >= 0 && (index !== V.image || (f.frame || 1) !== V.frame)) showImage(index, f.frame || 1);
    }
    renderFindings();
    renderOverlay();
    const item = document.querySelector('.rv-finding[data-finding-id="' + id + '"]');
    if (item && item.scrollIntoView) item.scrollIntoView({ block: "nearest" });
  }

  function step(delta) {
    if (!S.findings.length) return;
    const at = S.findings.findIndex(function (f) { return f.id === V.selected; });
    const next = at < 0 ? (delta > 0 ? 0 : S.findings.length - 1) : (at + delta + S.findings.length) % S.findings.length;
    select(S.findings[next].id, true);
  }

  function decide(id, decision) {
    if (!editable() || !findingById(id)) return;
    V.selected = id;
    act("POST", "/findings/" + id + "/decision", { decision: decision }, T["done_" + decision]);
  }

  function startDraw(mode) {
    if (!editable()) return;
    V.draw = mode;
    V.pending = null;
    $("rv-add-form").hidden = mode.kind !== "add";
    $("rv-amend-form").hidden = mode.kind !== "amend";
    const banner = $("rv-draw-banner");
    stage.classList.add("drawing");
    svg.classList.add("drawing");
    if (stage.scrollIntoView) stage.scrollIntoView({ block: "nearest" });
    if (mode.kind === "amend") {
      const f = findingById(mode.finding);
      select(mode.finding, true);
      const located = f && f.sop_instance_uid && imageIndexOf(f.sop_instance_uid) >= 0;
      $("rv-amend-hint").textContent = located ? fmt("amend_hint", { label: f.label }) : fmt("amend_hint_code", { label: f ? f.label : "" });
      banner.textContent = located ? T.draw_hint : "";
      banner.hidden = !located;
      $("rv-amend-code").value = "";
      $("rv-amend-comment").value = "";
    } else {
      banner.textContent = T.draw_hint;
      banner.hidden = false;
      $("rv-add-comment").value = "";
    }
    renderOverlay();
  }

  function clearPending() { V.pending = null; }

  function stopDraw() {
    V.draw = null;
    V.pending = null;
    drag = null;
    $("rv-add-form").hidden = true;
    $("rv-amend-form").hidden = true;
    $("rv-draw-banner").hidden = true;
    stage.classList.remove("drawing");
    svg.classList.remove("drawing");
    renderOverlay();
  }

  async function saveAdded() {
    if (!V.pending) { showError(T.box_needed, "rv-add-error"); return; }
    const image = S.images[V.pending.image];
    const body = {
      code: $("rv-add-code").value,
      sop_instance_uid: image.sop_instance_uid,
      box: V.pending.box,
      frame: image.frames > 1 ? V.pending.frame : null,
      comment: $("rv-add-comment").value,
    };
    if (await act("POST", "/added", body, T.done_added, "rv-add-error")) stopDraw();
  }

  async function saveAmend() {
    const id = V.draw && V.draw.finding;
    const f = findingById(id);
    if (!f) return;
    const body = { decision: "amend", comment: $("rv-amend-comment").value };
    if (V.pending) body.box = V.pending.box;
    if ($("rv-amend-code").value) body.code = $("rv-amend-code").value;
    if (!body.box && !body.code) { showError(T.amend_needs, "rv-amend-finding-error"); return; }
    if (await act("POST", "/findings/" + id + "/decision", body, T.done_amend, "rv-amend-finding-error")) stopDraw();
  }

  function where(item) {
    if (!item.sop_instance_uid) return T.study_level;
    const index = imageIndexOf(item.sop_instance_uid);
    return index >= 0 ? fmt("image_n", { n: index + 1 }) + (item.frame ? " · " + fmt("frame_n", { n: item.frame }) : "") : T.other_image;
  }

  function renderFindings() {
    const list = $("rv-findings");
    list.textContent = "";
    if (!S.findings.length) list.appendChild(el("li", { "class": "muted", text: T.no_findings }));
    S.findings.forEach(function (f) {
      const d = f.decision;
      const buttons = ["agree", "disagree", "amend"].map(function (kind) {
        const b = el("button", {
          type: "button", "class": "rv-decide " + kind, "data-decision": kind,
          "aria-pressed": String(!!d && d.decision === kind), disabled: !editable(),
        }, [T[kind], " ", el("kbd", { text: kind === "agree" ? "A" : kind === "disagree" ? "D" : "M" })]);
        b.addEventListener("click", function (e) {
          e.stopPropagation();
          if (kind === "amend") startDraw({ kind: "amend", finding: f.id });
          else decide(f.id, kind);
        });
        return b;
      });
      const pick = el("button", { type: "button", "class": "rv-pick" }, [
        el("strong", { text: f.label }), " ",
        el("span", { "class": "muted", text: "(" + f.code.meaning + ")" }), " ",
        el("span", { "class": "certainty " + f.certainty, text: T["certainty_" + f.certainty] || f.certainty }), " ",
        el("span", { "class": "ai-score", text: fmt("score", { score: f.score.toFixed(2) }) }), " ",
        el("span", { "class": "muted", text: where(f) }),
      ]);
      pick.addEventListener("click", function () { select(f.id, true); });
      let status;
      if (d) {
        status = el("p", { "class": "rv-decision " + d.decision, text: fmt("decided_" + d.decision, { name: d.by }) +
          (d.code ? " — " + d.code.meaning : "") + (d.comment ? " — " + d.comment : "") });
      } else {
        status = el("p", { "class": "rv-decision none", text: T.undecided });
      }
      const li = el("li", {
        "class": "rv-finding" + (V.selected === f.id ? " selected" : "") + (d ? " decided" : ""),
        "data-finding-id": f.id, "data-decision": d ? d.decision : "",
      }, [pick, status, el("div", { "class": "rv-decide-buttons" }, buttons)]);
      list.appendChild(li);
    });
    $("rv-undecided").textContent = S.findings.length
      ? (S.undecided ? fmt("undecided_count", { n: S.undecided }) : T.all_decided) : "";
  }

  function renderAdded() {
    const list = $("rv-added");
    list.textContent = "";
    if (!S.added.length) list.appendChild(el("li", { "class": "muted", text: T.no_added }));
    S.added.forEach(function (a) {
      const show = el("button", { type: "button", "class": "rv-pick" }, [
        el("strong", { text: a.code ? a.code.meaning : "" }), " ",
        el("span", { "class": "muted", text: where(a) + " · " + fmt("added_by", { name: a.by }) }),
      ]);
      show.addEventListener("click", function () {
        const index = imageIndexOf(a.sop_instance_uid);
        if (index >= 0) showImage(index, a.frame || 1);
      });
      const remove = el("button", { type: "button", "class": "rv-remove", disabled: !editable() }, [T.remove]);
      remove.addEventListener("click", function () {
        act("DELETE", "/added/" + a.id, undefined, T.done_removed);
      });
      list.appendChild(el("li", { "class": "rv-added-item", "data-decision-id": a.id },
        [show, a.comment ? el("span", { "class": "muted", text: " — " + a.comment }) : null, " ", remove]));
    });
  }

  function renderClaim() {
    const box = $("rv-claim");
    const final = S.report && S.report.state !== "draft";
    const other = S.claim && !S.claim.mine;
    let text;
    if (final) text = T.claim_final;
    else if (other) text = "🔒 " + fmt("claim_other", { name: S.claim.full_name });
    else if (S.claim) text = T.claim_mine;
    else text = S.you.reader ? T.claim_none : T.view_only;
    box.textContent = text;
    box.className = "rv-claim" + (other ? " locked" : S.claim ? " mine" : "");
  }

  function renderThumbCounts() {
    document.querySelectorAll(".rv-thumb").forEach(function (b) {
      const image = S.images[Number(b.dataset.index)];
      const n = S.findings.filter(function (f) { return f.sop_instance_uid === image.sop_instance_uid; }).length;
      const badge = b.querySelector(".rv-thumb-count");
      badge.hidden = n === 0;
      badge.textContent = fmt("ai_count", { n: n });
    });
  }

  function render() {
    renderClaim();
    renderFindings();
    renderAdded();
    renderThumbCounts();
    renderOverlay();
    document.querySelectorAll(".rv-edit").forEach(function (node) { node.disabled = !editable(); });
    if (!editable() && V.draw) stopDraw();
  }

  // --- the report ---------------------------------------------------------------------------

  function reportBody() {
    const conclusion = $("rv-conclusion").value;
    return { text: $("rv-report-text").value, conclusion: conclusion };
  }

  function saveDraft() {
    if (!editable()) return;
    act("PUT", "/report", reportBody(), T.done_saved, "rv-report-error");
  }

  async function sign() {
    if (!editable() || !$("rv-sign")) return;
    const body = reportBody();
    if (!window.confirm(T.sign_confirm)) return;
    const ok = await act("POST", "/sign", { text: body.text, conclusion: body.conclusion || null }, T.done_signed, "rv-report-error");
    if (ok) window.location.reload();
  }

  async function amendReport() {
    const body = {
      text: $("rv-amend-text").value,
      conclusion: $("rv-amend-conclusion").value,
      reason: $("rv-amend-reason").value,
    };
    if (!body.reason.trim()) { showError(T.reason_needed, "rv-amend-error"); return; }
    if (await act("POST", "/amend", body, T.done_amended, "rv-amend-error")) window.location.reload();
  }

  // --- wiring -------------------------------------------------------------------------------

  function on(id, event, handler) { const node = $(id); if (node) node.addEventListener(event, handler); }

  document.querySelectorAll(".rv-thumb").forEach(function (b) {
    b.addEventListener("click", function () { showImage(Number(b.dataset.index), 1); });
  });
  on("rv-prev", "click", function () { showImage(V.image - 1, 1); });
  on("rv-next", "click", function () { showImage(V.image + 1, 1); });
  on("rv-frame", "change", function () { showImage(V.image, parseInt($("rv-frame").value, 10) || 1); });
  on("rv-preset", "change", function () {
    const parts = preset.value ? preset.value.split(",") : ["", ""];
    wc.value = parts[0]; ww.value = parts[1]; load(false);
  });
  on("rv-wl-apply", "click", function () { preset.value = ""; load(false); });
  [wc, ww].forEach(function (input) {
    input.addEventListener("keydown", function (e) { if (e.key === "Enter") { preset.value = ""; load(false); } });
  });
  on("rv-invert", "change", function (e) { img.classList.toggle("inverted", e.target.checked); });
  on("rv-overlay", "change", function (e) { V.overlay = e.target.checked; renderOverlay(); });
  on("rv-heatmap", "change", function (e) { V.heat = e.target.checked; renderOverlay(); });
  on("rv-zoom-in", "click", function () { zoomTo(V.zoom * 1.25); });
  on("rv-zoom-out", "click", function () { zoomTo(V.zoom / 1.25); });
  on("rv-fit", "click", resetView);
  on("rv-add", "click", function () { startDraw({ kind: "add" }); });
  on("rv-add-save", "click", saveAdded);
  on("rv-add-cancel", "click", stopDraw);
  on("rv-amend-save", "click", saveAmend);
  on("rv-amend-cancel", "click", stopDraw);
  on("rv-save", "click", saveDraft);
  on("rv-sign", "click", sign);
  on("rv-amend-sign", "click", amendReport);
  on("rv-release", "click", async function () {
    if (await act("POST", "/release", undefined, T.done_released)) window.location.href = "/review";
  });

  function toggle(id) {
    const box = $(id);
    if (!box || (box.closest("[hidden]"))) return;
    box.checked = !box.checked;
    box.dispatchEvent(new Event("change"));
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target && e.target.closest && e.target.closest("input, textarea, select, [contenteditable]")) return;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    const actions = {
      a: function () { if (V.selected) decide(V.selected, "agree"); },
      d: function () { if (V.selected) decide(V.selected, "disagree"); },
      m: function () { if (V.selected) startDraw({ kind: "amend", finding: V.selected }); },
      n: function () { step(1); },
      p: function () { step(-1); },
      x: function () { startDraw({ kind: "add" }); },
      s: sign,
      i: function () { toggle("rv-invert"); },
      o: function () { toggle("rv-overlay"); },
      h: function () { toggle("rv-heatmap"); },
      r: resetView,
      "+": function () { zoomTo(V.zoom * 1.25); },
      "-": function () { zoomTo(V.zoom / 1.25); },
      Escape: stopDraw,
      ArrowRight: function () { showImage(V.image + 1, 1); },
      ArrowDown: function () { showImage(V.image + 1, 1); },
      ArrowLeft: function () { showImage(V.image - 1, 1); },
      ArrowUp: function () { showImage(V.image - 1, 1); },
    };
    if (actions[key]) { e.preventDefault(); actions[key](); }
  });

  // --- start: show the first image (the first finding's, if any) and claim the study ---------

  async function start() {
    const first = S.findings.find(function (f) { return f.sop_instance_uid && imageIndexOf(f.sop_instance_uid) >= 0; });
    if (S.images.length) showImage(first ? imageIndexOf(first.sop_instance_uid) : 0, first ? first.frame || 1 : 1);
    if (S.findings.length) V.selected = (S.findings.find(function (f) { return !f.decision; }) || S.findings[0]).id;
    render();
    const final = S.report && S.report.state !== "draft";
    if (S.you.reader && !final && !(S.claim && !S.claim.mine)) {
      try {
        S = await call("POST", "/claim");
      } catch (err) {
        showError(err.message);
      }
      render();
    }
    root.dataset.ready = "true";
  }
  start();
})();
