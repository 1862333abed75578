/* System Health panel: the Alerts card (alert target, what fires now, the last alerts and their delivery).
 *
 * app.js calls PanelAlerts.refresh(api) on each of its refreshes; this view polls at most every 15 s and never
 * signs anyone out (the main refresh handles 401/403). Same CSP rules as app.js: no inline style, text only.
 */
(function () {
  "use strict";

  var MIN_INTERVAL_MS = 15000;
  var lastAt = 0;
  var inFlight = false;

  function $(id) { return document.getElementById(id); }

  function text(tag, value, cls) {
    var el = document.createElement(tag);
    el.textContent = value;
    if (cls) { el.className = cls; }
    return el;
  }

  function when(iso) {
    var d = new Date(iso);
    return isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  }

  function delivery(item) {
    return (item.deliveries || []).map(function (d) {
      var s = d.target + ": " + d.status;
      if (d.status !== "sent" && d.attempts) { s += " (" + d.attempts + " tries, " + (d.last_error || "?") + ")"; }
      return s;
    }).join(" · ");
  }

  function render(body) {
    var target = body.target || {};
    var parts = [];
    if (target.webhook) { parts.push("webhook " + target.webhook); }
    if (target.emails) { parts.push(target.emails + " email recipient(s)"); }
    $("alerts-target").textContent = parts.length ? parts.join(", ") : "none configured (ALERT_WEBHOOK_URL unset)";
    var firing = body.firing || [];
    $("alerts-firing").hidden = firing.length === 0;
    $("alerts-firing").textContent = firing.length ? "Firing now: " + firing.map(function (f) {
      return f.event + " (since " + when(f.since) + ")";
    }).join(", ") : "";
    var list = $("alerts-list");
    list.replaceChildren();
    (body.items || []).forEach(function (item) {
      var li = document.createElement("li");
      li.className = "alert-item alert-" + item.state;
      li.appendChild(text("span", item.state.toUpperCase(), "alert-state"));
      li.appendChild(text("span", item.level, "alert-level"));
      li.appendChild(text("strong", item.event));
      li.appendChild(text("span", item.message, "alert-message"));
      li.appendChild(text("time", when(item.at)));
      li.appendChild(text("span", delivery(item), "help alert-delivery"));
      list.appendChild(li);
    });
    $("alerts-empty").hidden = (body.items || []).length > 0;
  }

  function refresh(api) {
    if (inFlight || Date.now() - lastAt < MIN_INTERVAL_MS || !$("alerts")) { return; }
    inFlight = true;
    lastAt = Date.now();
    api("/api/admin/system/alerts").then(function (body) {
      inFlight = false;
      $("alerts-msg").hidden = true;
      render(body || {});
    }, function (err) {
      inFlight = false;
      $("alerts-msg").hidden = false;
      $("alerts-msg").textContent = "Alerts could not be loaded: " + (err && err.message || err);
    });
  }

  window.PanelAlerts = { refresh: refresh };
}());
