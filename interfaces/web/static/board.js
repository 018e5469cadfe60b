// Procedure board: refresh the results every 30 seconds while the tab is visible (the filters stay as typed).
// A refresh is a background request (X-RIS-Refresh: 1): it does not count as activity, so an idle session ends.
(function () {
  "use strict";
  var box = document.getElementById("auto-refresh");
  var results = document.getElementById("board-results");
  var stamp = document.getElementById("refreshed");
  if (!box || !results) { return; }
  function refresh() {
    if (!box.checked || document.hidden) { return; }
    fetch(window.location.href, { headers: { "X-RIS-Refresh": "1" }, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("board-results");
        // No board in the answer: the session ended (idle expiry; a refresh does not renew it). Reload, so the
        // sign-in page shows instead of a board that silently stopped changing.
        if (!fresh) { window.location.reload(); return; }
        results.replaceChildren.apply(results, Array.from(fresh.childNodes));
        var when = doc.getElementById("refreshed");
        if (when && stamp) { stamp.textContent = when.textContent; }
      })
      .catch(function (err) { if (stamp) { stamp.textContent = "Refresh failed (" + err.message + ")"; } });
  }
  window.setInterval(refresh, 30000);
  window.risRefreshBoard = refresh;  // for tests and for people who cannot wait
})();
