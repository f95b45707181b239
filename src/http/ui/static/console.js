// fanfare console: live progress of an open run (the only script; the
// console works without it, refreshing an open run's page every 5 s).
(function () {
  "use strict";
  var live = document.querySelector("[data-events]");
  if (!live || !window.EventSource) {
    return;
  }
  var order = ["succeeded", "failed", "timed_out", "cancelled", "open"];

  function update(c) {
    var total = c.total || 0;
    var terminal = total - c.open;
    var x = 0;
    order.forEach(function (name) {
      var n = c[name] || 0;
      var count = live.querySelector('[data-count="' + name + '"]');
      if (count) {
        count.textContent = String(n);
      }
      var seg = live.querySelector('[data-seg="' + name + '"]');
      if (seg) {
        var w = total > 0 ? (n * 1000) / total : 0;
        seg.setAttribute("x", x.toFixed(2));
        seg.setAttribute("width", w.toFixed(2));
        x += w;
      }
    });
    var pct = total > 0 ? Math.floor((terminal * 100) / total) : 0;
    var text = live.querySelector("[data-percent]");
    if (text) {
      text.textContent = terminal + " of " + total + " pages reported (" + pct + " %)";
    }
    var status = document.querySelector("[data-status]");
    if (status) {
      status.textContent = c.status;
    }
  }

  var source = new EventSource(live.getAttribute("data-events"));
  source.addEventListener("progress", function (e) {
    update(JSON.parse(e.data));
  });
  source.addEventListener("done", function (e) {
    update(JSON.parse(e.data));
    source.close();
    // The finished run's tables, charts and buttons come from the server.
    window.location.reload();
  });
  // A dropped connection is retried by the browser itself; a refusal (429
  // when too many streams are open, or any other error answer) closes the
  // source for good. Then the page reloads itself now and then instead, as
  // it does without script, but more slowly (30 to 60 s, spread out so
  // that many pages do not come back at once).
  source.addEventListener("error", function () {
    if (source.readyState !== EventSource.CLOSED) {
      return;
    }
    var note = document.createElement("p");
    note.className = "muted";
    note.setAttribute("data-live", "off");
    note.textContent = "Live updates are not available just now; this page reloads itself every half minute or so.";
    live.appendChild(note);
    window.setTimeout(function () {
      window.location.reload();
    }, 30000 + Math.floor(Math.random() * 30000));
  });
})();
