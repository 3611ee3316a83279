// The ED view stays current: while the page is visible it asks every few seconds for the
// view's fingerprint (no patient data) and reloads when a study, an AI answer or a signed
// report has arrived. Hidden tabs do not poll, so an unattended screen does not keep
// asking (its session still expires as usual).
(function () {
  "use strict";
  var live = document.getElementById("ed-live");
  if (!live) return;
  var INTERVAL_MS = 3000;
  var known = live.dataset.fingerprint;
  var timer = null;
  function check() {
    if (document.hidden) return;
    fetch(live.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (body && body.fingerprint !== known) window.location.reload();
      })
      .catch(function () { /* offline for a moment: try again at the next tick */ });
  }
  timer = window.setInterval(check, INTERVAL_MS);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) check(); });
  window.addEventListener("pagehide", function () { window.clearInterval(timer); });
})();
