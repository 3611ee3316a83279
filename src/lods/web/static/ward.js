/* The ward board, live (templates/wards/board.html and phone.html).
 *
 * The page carries the board's read model (#ward-state, the JSON of
 * GET /api/wards/{id}/board) and its messages (#ward-text). The script draws a tile per
 * bed (board and station layouts) or the alarm list and bed list (phone), follows the
 * ward's event stream (/wards/{id}/events) and, on each event, re-reads the board and
 * redraws the tiles that changed. Events carry ids only; patient data comes through the
 * authorised, audited board API. Acknowledging and resolving go to /api/wards/{id}/...
 * with the CSRF header. The browser reconnects a dropped stream; the indicator says
 * "live" or "reconnecting". Colour is never the only cue: each tile names its band.
 */
(function () {
  "use strict";
  // Forms with a local date and time send the browser's zone (any ward page).
  document.querySelectorAll('input[name="tz_offset"]').forEach(function (input) {
    input.value = String(new Date().getTimezoneOffset());
  });
  const root = document.getElementById("ward");
  if (!root) return;
  const $ = function (id) { return document.getElementById(id); };
  const T = JSON.parse($("ward-text").textContent);
  let B = JSON.parse($("ward-state").textContent);
  const wardId = root.dataset.wardId;
  const layout = root.dataset.layout;
  const csrf = root.dataset.csrf;
  const lang = root.dataset.lang || "en";
  const base = "/api/wards/" + encodeURIComponent(wardId);
  const SVG = "http://www.w3.org/2000/svg";
  const BANDS = ["low", "low_medium", "medium", "high"];
  const FALL_KINDS = ["fall.alarm", "fall.bed_exit"];
  const DAY_MS = 24 * 3600 * 1000;
  const drawn = {};  // bed id → what its tile was drawn from

  // --- small helpers -------------------------------------------------------------------------

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
  function minutesSince(iso) { return Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 60000)); }
  function clock(iso) { return new Date(iso).toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit" }); }
  function ago(iso) {
    const m = minutesSince(iso);
    if (m < 1) return T.just_now;
    if (m < 60) return fmt("minutes_ago", { n: m });
    return fmt("hours_ago", { h: Math.floor(m / 60), m: m % 60 });
  }
  function personName(value) {
    const parts = (value || "").split("^");
    const family = parts[0], given = parts.slice(1, 3).filter(Boolean).join(" ");
    return family && given ? family + ", " + given : (family || given || value || "");
  }
  function bandLabel(score) {  // the band of the newest complete set
    if (!score) return T.no_score;
    if (score.total === null) return T.incomplete;
    return BANDS.indexOf(score.band) >= 0 ? T["band." + score.band] : (score.band || "");
  }
  function where(tile) { return fmt("where", { room: tile.room || "—", bed: tile.code }); }
  function unacknowledged(a) { return a.state === "raised" || a.state === "notified"; }

  // --- pictures: a stick figure for fall alarms (never video), a sparkline for the trend ----

  function figure(kind) {
    const svg = svgEl("svg", { viewBox: "0 0 32 24", class: "figure", "aria-hidden": "true" });
    const line = function (x1, y1, x2, y2) { svg.appendChild(svgEl("line", { x1: x1, y1: y1, x2: x2, y2: y2 })); };
    if (kind === "fall.alarm") {  // a person lying on the floor
      svg.appendChild(svgEl("circle", { cx: 5, cy: 15, r: 3 }));
      line(8, 16, 19, 17); line(19, 17, 27, 13); line(19, 17, 27, 20); line(12, 16, 15, 10); line(12, 16, 16, 21);
      line(1, 23, 31, 23);
    } else if (kind === "fall.bed_exit") {  // a person getting up beside the bed
      svg.appendChild(svgEl("circle", { cx: 9, cy: 4, r: 3 }));
      line(9, 7, 9, 15); line(9, 10, 4, 13); line(9, 10, 14, 12); line(9, 15, 6, 22); line(9, 15, 12, 22);
      svg.appendChild(svgEl("rect", { x: 17, y: 13, width: 14, height: 5 })); line(31, 10, 31, 22);
    } else {  // an early-warning alert: a pulse trace
      svg.appendChild(svgEl("polyline", { points: "1,14 8,14 11,6 15,21 18,11 21,14 31,14", fill: "none" }));
    }
    return svg;
  }

  function sparkline(trend) {
    const W = 120, H = 30;
    const svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, class: "spark", role: "img", preserveAspectRatio: "none" });
    if (!trend || !trend.length) { svg.setAttribute("aria-label", T.no_trend); return svg; }
    const end = Date.now(), start = end - DAY_MS;
    const top = Math.max(8, Math.max.apply(null, trend.map(function (p) { return p.total; })));
    const y = function (total) { return (H - 2 - (total / top) * (H - 4)).toFixed(1); };
    const x = function (iso) { return Math.max(0, Math.min(W, ((Date.parse(iso) - start) / DAY_MS) * W)).toFixed(1); };
    [5, 7].forEach(function (limit) {
      svg.appendChild(svgEl("line", { x1: 0, x2: W, y1: y(limit), y2: y(limit), class: "spark-limit" }));
    });
    const points = trend.map(function (p) { return x(p.at) + "," + y(p.total); }).join(" ");
    svg.appendChild(svgEl("polyline", { points: points, class: "spark-line" }));
    const last = trend[trend.length - 1];
    svg.appendChild(svgEl("circle", { cx: x(last.at), cy: y(last.total), r: 2.5, class: "spark-dot" }));
    svg.setAttribute("aria-label", fmt("trend", { values: trend.map(function (p) { return p.total; }).join(", ") }));
    return svg;
  }

  // --- one alarm, with its buttons -------------------------------------------------------------

  function resolveForm(a) {
    const form = el("form", { class: "js-resolve", "data-alert": a.id, "data-kind": a.kind });
    if (FALL_KINDS.indexOf(a.kind) >= 0) {
      const outcome = el("select", { name: "outcome", required: "required" }, [el("option", { value: "", text: "—" })]);
      const choices = ["fall", "near_fall", "false_alarm"].concat(a.kind === "fall.bed_exit" ? ["attended"] : []);
      choices.forEach(function (o) { outcome.appendChild(el("option", { value: o, text: T["outcome." + o] })); });
      const grade = el("select", { name: "injury_grade" }, [el("option", { value: "", text: "—" })]);
      ["none", "minor", "moderate", "severe", "death"].forEach(function (g) { grade.appendChild(el("option", { value: g, text: T["injury." + g] })); });
      form.appendChild(el("label", {}, [T.outcome + " ", outcome]));
      form.appendChild(el("label", {}, [T.injury + " ", grade]));
      form.appendChild(el("label", {}, [T.note + " ", el("input", { name: "resolution", maxlength: 4000 })]));
    } else {
      form.appendChild(el("label", {}, [T.resolution + " ", el("input", { name: "resolution", required: "required", maxlength: 4000 })]));
    }
    form.appendChild(el("button", { type: "submit", text: T.resolve }));
    return el("details", { class: "resolve-box" }, [el("summary", { text: T.resolve + "…" }), form]);
  }

  function alarm(a, tile, big) {
    const cls = ["alarm", "sev-" + a.severity, "state-" + a.state];
    if (a.severity === "urgent" && unacknowledged(a)) cls.push("flash");
    const facts = [ago(a.raised_at)];
    if (a.acknowledged_by) facts.push(fmt("acknowledged_by", { name: a.acknowledged_by }));
    else facts.push(T["state." + a.state] || a.state);
    if (a.notifications > 1) facts.push(fmt("notified", { n: a.notifications }));
    if (a.escalation_level > 0) facts.push(T.escalated);
    const text = el("div", { class: "alarm-text" }, [
      el("strong", { class: "alarm-title", text: a.title }),
      tile ? el("span", { class: "alarm-where", text: where(tile) + (tile.occupant ? " · " + personName(tile.occupant.name) : "") }) : null,
      el("span", { class: "alarm-facts", text: facts.join(" · ") }),
    ]);
    const actions = el("div", { class: "alarm-buttons" });
    if (unacknowledged(a)) {
      actions.appendChild(el("button", { type: "button", class: "ack" + (big ? " big" : ""), "data-ack": a.id, text: T.acknowledge }));
    } else if (layout !== "station") {
      actions.appendChild(resolveForm(a));
    }
    return el(big ? "article" : "li", { class: cls.join(" "), id: "alarm-" + a.id, "data-alert-id": a.id, "data-state": a.state },
      [figure(a.kind), text, actions]);
  }

  // --- one tile ----------------------------------------------------------------------------------

  function vitalsList(v) {
    const items = [];
    const num = function (key, digits) {
      const r = v[key];
      if (!r) return null;
      if (!r.valid) return T.invalid;
      return digits === undefined ? String(Math.round(r.value)) : Number(r.value).toFixed(digits);
    };
    const add = function (label, value, unit) { if (value !== null) items.push(el("span", { class: "vital" }, [el("abbr", { text: label }), " " + value + (unit || "")])); };
    add(T["param.resp_rate"], num("resp_rate"));
    add(T["param.spo2"], num("spo2"), " %");
    if (v.oxygen) add(T["param.oxygen"], T["o2." + v.oxygen.text] || v.oxygen.text);
    const sys = num("bp_sys"), dia = num("bp_dia");
    if (sys !== null) add(T["param.bp"], sys + (dia !== null ? "/" + dia : ""));
    const pulse = v.pulse_rate ? "pulse_rate" : "heart_rate";
    add(T["param." + pulse], num(pulse));
    if (v.consciousness) add(T["param.consciousness"], v.consciousness.text || "?");
    add(T["param.temperature"], num("temperature", 1), " °C");
    return items.length ? el("p", { class: "tile-vitals" }, items) : null;
  }

  function dueLine(score) {
    if (!score || !score.due_at) return null;
    const late = Date.now() - Date.parse(score.due_at);
    if (late > 0) return el("p", { class: "tile-due overdue", text: fmt("overdue", { minutes: Math.floor(late / 60000) }) });
    return el("p", { class: "tile-due", text: fmt("due", { time: clock(score.due_at) }) });
  }

  function tile(t) {
    const score = t.score;
    const colour = score ? score.colour : "none";
    const cls = ["tile", "colour-" + colour, "attention-" + t.attention];
    if (!t.occupant) cls.push("empty");
    if (t.alerts.some(function (a) { return a.severity === "urgent" && unacknowledged(a); })) cls.push("alarming");
    const head = el("header", { class: "tile-head" }, [
      el("a", { class: "tile-where", href: "/wards/" + wardId + "/beds/" + t.id, text: where(t) }),
    ]);
    const node = el("article", { class: cls.join(" "), id: "bed-" + t.id, "data-bed-id": t.id, "data-colour": colour }, [head]);
    if (!t.occupant) { node.appendChild(el("p", { class: "tile-empty", text: T.empty })); return node; }
    const p = t.occupant;
    node.appendChild(el("p", { class: "tile-patient" }, [
      el("strong", { text: personName(p.name) || p.patient_id }),
      el("span", { class: "muted", text: " " + [p.age !== null ? p.age : "", p.sex].filter(String).join(" ") }),
    ]));
    const total = score && score.total !== null ? String(score.total) : "–";
    node.appendChild(el("div", { class: "tile-score" }, [
      el("span", { class: "score-total", text: total }),
      el("span", { class: "score-band" }, [el("span", { class: "score-name", text: score ? score.name : "" }), " " + bandLabel(score)]),
      sparkline(t.trend),
    ]));
    if (score && score.missing.length) {
      const names = score.missing.map(function (m) { return T["param." + m] || m; }).join(", ");
      node.appendChild(el("p", { class: "tile-missing", text: fmt("missing", { list: names }) }));
    }
    if (score && !score.complete && score.scored_at) {  // the total shown is an older set's
      node.appendChild(el("p", { class: "tile-scored", text: fmt("scored_at", { time: clock(score.scored_at) }) }));
    }
    [dueLine(score), vitalsList(t.vitals)].forEach(function (part) { if (part) node.appendChild(part); });
    const tags = [];
    if (t.risk) tags.push(el("span", { class: "tag risk-" + t.risk.level, text: fmt("risk", { level: T["risk." + t.risk.level] || t.risk.level, total: t.risk.total }) }));
    if (t.bed_exit) tags.push(el("span", { class: "tag bed-exit-" + t.bed_exit, text: T["bed_exit." + t.bed_exit] }));
    t.options.forEach(function (o) {
      if (o.key === "spo2_scale" && String(o.value) === "2") tags.push(el("span", { class: "tag option", text: T["option.scale2"] }));
      else if (o.key === "pregnant" && o.value === true) tags.push(el("span", { class: "tag option", text: T["option.pregnant"] }));
    });
    if (tags.length) node.appendChild(el("p", { class: "tile-tags" }, tags));
    if (t.alerts.length) node.appendChild(el("ul", { class: "tile-alarms" }, t.alerts.map(function (a) { return alarm(a, null, false); })));
    return node;
  }

  // --- drawing the page ---------------------------------------------------------------------------

  function busy(node) {  // someone is filling in a form there: leave it alone for now
    return !!node && !!node.querySelector("details[open]");
  }

  function place(container, nodes) {
    nodes.forEach(function (node, i) {
      if (container.children[i] !== node) container.insertBefore(node, container.children[i] || null);
    });
    while (container.children.length > nodes.length) container.removeChild(container.lastChild);
  }

  function drawTiles() {
    const grid = $("ward-grid");
    const minute = Math.floor(Date.now() / 60000);  // relative times change each minute
    const nodes = B.beds.map(function (t) {
      const key = minute + JSON.stringify(t);
      let node = $("bed-" + t.id);
      if (!node || (drawn[t.id] !== key && !busy(node))) {
        const fresh = tile(t);
        if (node) node.replaceWith(fresh);
        node = fresh;
        drawn[t.id] = key;
      }
      return node;
    });
    place(grid, nodes);
  }

  function openAlarms() {
    const list = [];
    B.beds.forEach(function (t) { t.alerts.forEach(function (a) { list.push([a, t]); }); });
    B.ward_alerts.forEach(function (a) { list.push([a, null]); });
    const rank = { urgent: 0, warning: 1, info: 2 };
    list.sort(function (x, y) {
      return (unacknowledged(y[0]) - unacknowledged(x[0])) || (rank[x[0].severity] - rank[y[0].severity]) ||
        (Date.parse(x[0].raised_at) - Date.parse(y[0].raised_at));
    });
    return list;
  }

  function drawBanner() {
    const banner = $("ward-banner");
    const urgent = openAlarms().filter(function (p) { return p[0].severity === "urgent" && unacknowledged(p[0]); });
    const key = Math.floor(Date.now() / 60000) + JSON.stringify([B.ward_alerts, urgent.map(function (p) { return p[0]; })]);
    if (banner.dataset.key === key) return;
    banner.dataset.key = key;
    banner.replaceChildren.apply(banner, urgent.map(function (p) { return alarm(p[0], p[1], true); }));
    const others = $("ward-alerts");
    others.replaceChildren.apply(others, B.ward_alerts.map(function (a) { return alarm(a, null, true); }));
  }

  function drawPhone() {
    const alarms = $("ph-alarms");
    if (!busy(alarms)) {
      const list = openAlarms();
      alarms.replaceChildren.apply(alarms, list.length ? list.map(function (p) { return alarm(p[0], p[1], true); })
        : [el("p", { class: "muted", text: T.no_alarms })]);
    }
    const beds = $("ph-beds");
    beds.replaceChildren.apply(beds, B.beds.map(function (t) {
      const score = t.score;
      const parts = [el("a", { class: "ph-where", href: "/wards/" + wardId + "/beds/" + t.id, text: where(t) })];
      if (!t.occupant) parts.push(el("span", { class: "muted", text: T.empty }));
      else {
        parts.push(el("span", { class: "ph-name", text: personName(t.occupant.name) }));
        parts.push(el("span", { class: "ph-score", text: (score && score.total !== null ? score.total + " " : "") + bandLabel(score) }));
        const due = dueLine(score);
        if (due && due.classList.contains("overdue")) parts.push(el("span", { class: "ph-overdue", text: due.textContent }));
        if (t.alerts.length) {
          const count = t.alerts.length === 1 ? T.alarm_one : fmt("alarm_count", { n: t.alerts.length });
          parts.push(el("span", { class: "ph-alarm-count", text: count }));
        }
      }
      return el("li", { class: "ph-bed colour-" + (score ? score.colour : "none"), id: "bed-" + t.id, "data-bed-id": t.id }, parts);
    }));
  }

  function draw() {
    if (layout === "phone") drawPhone();
    else { drawTiles(); drawBanner(); }
    $("ward-counts").textContent = fmt("counts", { occupied: B.counts.occupied, beds: B.counts.beds, alerts: B.counts.alerts });
    const stamp = $("ward-clock");
    if (stamp) stamp.textContent = new Date().toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit" });
    document.title = (B.counts.unacknowledged ? "(" + B.counts.unacknowledged + ") " : "") + document.title.replace(/^\(\d+\) /, "");
  }

  // --- reading the board again ------------------------------------------------------------------

  const MIN_GAP_MS = 500;
  let inFlight = false, again = false, lastRead = 0, waiting = null;

  function toLogin() { window.location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); }

  function refresh() {
    if (inFlight) { again = true; return; }
    const wait = lastRead + MIN_GAP_MS - Date.now();
    if (wait > 0) { if (!waiting) waiting = setTimeout(function () { waiting = null; refresh(); }, wait); return; }
    inFlight = true;
    lastRead = Date.now();
    fetch(base + "/board", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401) { toLogin(); return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (body) { if (body) { B = body; draw(); } })
      .catch(function () { setLive("reconnecting"); })
      .finally(function () { inFlight = false; if (again) { again = false; refresh(); } });
  }

  function showError(message) {
    let box = $("ward-error");
    if (!box) { box = el("p", { id: "ward-error", class: "error", role: "alert" }); root.insertBefore(box, root.children[1] || null); }
    box.textContent = message; box.hidden = false;
    setTimeout(function () { box.hidden = true; }, 8000);
  }

  function post(path, body) {
    return fetch(base + path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    }).then(function (r) {
      if (r.status === 401) { toLogin(); return; }
      if (!r.ok) return r.json().catch(function () { return {}; }).then(function (e) { showError(fmt("failed", { reason: e.detail || r.status })); });
    }).catch(function () { showError(fmt("failed", { reason: T.offline })); })
      .then(function () { lastRead = 0; refresh(); });
  }

  root.addEventListener("click", function (ev) {
    const button = ev.target.closest("button[data-ack]");
    if (!button) return;
    button.disabled = true;
    post("/alerts/" + button.dataset.ack + "/acknowledge");
  });
  root.addEventListener("submit", function (ev) {
    const form = ev.target.closest("form.js-resolve");
    if (!form) return;
    ev.preventDefault();
    const data = new FormData(form);
    const body = { resolution: data.get("resolution") || "" };
    if (data.has("outcome")) { body.outcome = data.get("outcome"); body.injury_grade = data.get("injury_grade") || null; }
    form.closest("details").open = false;
    post("/alerts/" + form.dataset.alert + "/resolve", body);
  });

  // --- the event stream ------------------------------------------------------------------------

  const TYPES = ["alert", "vitals", "score", "occupancy", "risk", "sensor", "resync", "message"];
  let source = null, backoff = 1000;

  function setLive(state) {
    const live = $("ward-live");
    live.dataset.state = state;
    live.textContent = T[state];
    root.dataset.live = state;
  }

  function connect() {
    setLive(source ? "reconnecting" : "connecting");
    source = new EventSource("/wards/" + encodeURIComponent(wardId) + "/events");
    source.onopen = function () { setLive("live"); backoff = 1000; refresh(); };
    TYPES.forEach(function (type) { source.addEventListener(type, refresh); });
    source.addEventListener("logout", function () { source.close(); toLogin(); });
    source.onerror = function () {
      setLive("reconnecting");
      if (source.readyState === EventSource.CLOSED) {  // refused (e.g. a 401): try again later
        source.close();
        refresh();  // a login that ended shows here as a 401 and leads to the login page
        setTimeout(connect, backoff);
        backoff = Math.min(backoff * 2, 30000);
      }
    };
  }

  draw();
  connect();
  setInterval(draw, 30000);  // relative times and overdue minutes move on by themselves
  window.addEventListener("pagehide", function () { if (source) source.close(); });
})();
