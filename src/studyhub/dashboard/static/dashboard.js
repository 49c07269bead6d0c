// StudyHub ops dashboard: the only script. Pages work without it; it adds auto-refresh of
// regions marked data-refresh="SECONDS" (the live page), paused while the box is unchecked,
// the tab is hidden, or the pointer rests on the region (so a click never lands on a row that
// just moved).
(function () {
  "use strict";
  function start() {
    var region = document.querySelector("[data-refresh]");
    if (!region) { return; }
    var seconds = parseFloat(region.getAttribute("data-refresh")) || 2;
    var toggle = document.getElementById("autorefresh");
    var hovering = false;
    region.addEventListener("mouseenter", function () { hovering = true; });
    region.addEventListener("mouseleave", function () { hovering = false; });
    function refresh() {
      if ((toggle && !toggle.checked) || document.hidden || hovering) { return schedule(); }
      fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById(region.id);
          if (fresh) { region.innerHTML = fresh.innerHTML; }
          var ms = doc.getElementById("render-ms"), mine = document.getElementById("render-ms");
          if (ms && mine) { mine.textContent = ms.textContent; }
        })
        .catch(function () { /* keep the last view; try again next round */ })
        .then(schedule);
    }
    function schedule() { window.setTimeout(refresh, seconds * 1000); }
    schedule();
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); }
  else { start(); }
})();
