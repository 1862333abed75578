/* The operator's cockpit, next to System Health: request search with a drawer per request (its timeline), bulk
 * retry (filter -> dry-run numbers -> confirm with a reason -> progress), the audit trail, the runtime limits
 * form, and the kill switch's countdown / in-flight preview.
 *
 * Same rules as app.js: plain JS under a strict CSP (no inline script or style), the tab's token and every API
 * call through session.js (app.js signs in), every visual state a class or `hidden`. A viewer (role in the token)
 * sees no action: the body gets `role-viewer` and every `.admin-only` control is hidden (the server refuses anyway).
 */
(function () {
  "use strict";

  var REFRESH_MS = 5000;
  var C = { started: false, token: null, role: null, cursor: null, filter: {}, auditOldest: null, auditPaged: false,
            mode: null, limits: null, bulkFilter: null, progressTimer: null, countdownTimer: null,
            metrics: null };

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function fmtTime(iso) {
    if (!iso) { return "–"; }
    var d = new Date(iso);
    if (isNaN(d.getTime())) { return String(iso); }
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":" +
      pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function fmtLeft(seconds) {
    var s = Math.max(0, Math.round(seconds));
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    return (h ? h + " h " : "") + (h || m ? m + " min " : "") + (s % 60) + " s";
  }

  var session = window.ProvisionerSession;

  var api = session.request;


  function message(id, kind, text) {
    var node = $(id);
    node.className = "notice " + (kind === "ok" ? "notice-ok" : kind === "warn" ? "notice-warn" : "notice-bad");
    node.textContent = text;
    node.hidden = false;
  }

  function openDialog(dialog) {
    if (!dialog.open) { dialog.showModal(); }
  }

  function closeDialog(dialog) {
    if (dialog.open) { dialog.close(); }
  }

  // ------------------------------------------------------------------ start / stop with app.js's session

  function watchSession() {
    var token = session.token();
    var signedIn = token && !$("panel").hidden;
    if (signedIn && (!C.started || token !== C.token)) {
      C.token = token;
      C.role = session.roleOf(token);
      document.body.classList.toggle("role-viewer", C.role !== "admin");
      C.started = true;
      search(false);
      loadAudit(false);
      refresh();
    } else if (!signedIn && C.started) {
      C.started = false;
      C.token = null;
      $("req-rows").textContent = "";
      $("audit-rows").textContent = "";
      document.body.classList.remove("role-viewer");
    }
  }

  function refresh() {
    if (!C.started) { return; }
    api("/api/admin/system/mode").then(function (r) { C.mode = r; renderCountdown(); }, function () {});
    api("/api/admin/system/limits").then(function (r) { renderLimits(r); }, function () {});
    if (!C.auditPaged) { loadAudit(false); }
  }

  // ------------------------------------------------------------------ search

  function readFilter() {
    var f = {};
    var q = $("req-q").value.trim();
    if (q) { f.q = q; }
    if ($("req-status").value) { f.status = $("req-status").value; }
    var actor = $("req-actor").value.trim();
    if (actor) { f.actor = actor; }
    ["from", "to"].forEach(function (k) {
      var v = $("req-" + k).value;
      if (v) { f[k] = new Date(v).toISOString(); }
    });
    return f;
  }

  function search(more) {
    if (!more) { C.filter = readFilter(); C.cursor = null; }
    var params = new URLSearchParams(C.filter);
    params.set("limit", "25");
    if (more && C.cursor) { params.set("cursor", C.cursor); }
    $("req-more").disabled = true;
    api("/api/admin/requests?" + params.toString()).then(function (r) {
      $("req-msg").hidden = true;
      var body = $("req-rows");
      if (!more) { body.textContent = ""; }
      r.items.forEach(function (item) { body.appendChild(requestRow(item)); });
      C.cursor = r.next_cursor;
      $("req-more").hidden = !C.cursor;
      $("req-more").disabled = false;
      var n = body.children.length;
      $("req-count").textContent = n ? n + (C.cursor ? "+" : "") + " shown" : "No request matches.";
      $("req-bulk").disabled = n === 0;
    }, function (err) {
      message("req-msg", "bad", "Search failed: " + session.describe(err));
      $("req-more").disabled = false;
    });
  }

  function requestRow(item) {
    var tr = el("tr");
    [fmtTime(item.created_at), item.email, item.full_name, item.status, item.actor, String(item.attempts)]
      .forEach(function (text, i) {
        var td = el("td", i === 3 ? "status-" + item.status : null, text);
        tr.appendChild(td);
      });
    var td = el("td");
    var btn = el("button", "btn btn-small", "Story");
    btn.type = "button";
    btn.setAttribute("aria-label", "Open the story of the request for " + item.email);
    btn.addEventListener("click", function () { openStory(item.request_id); });
    td.appendChild(btn);
    tr.appendChild(td);
    return tr;
  }

  // ------------------------------------------------------------------ drawer: one request's story

  var KIND_WORDS = {
    recorded: "Recorded", queued: "Queued", sync: "Created synchronously", fallback: "Fallback to sync",
    attempt: "Attempt", retried: "Retried", user_created: "User created", failed: "Failed",
    email_sent: "Welcome email sent", email_failed: "Welcome email failed", email_pending: "Welcome email pending",
    password_set: "Password set"
  };

  function describeStep(step) {
    var d = step.detail || {};
    switch (step.kind) {
      case "recorded": return "by " + d.actor + " (" + d.mode + ")";
      case "fallback": return d.why || d.reason;
      case "sync": return d.why;
      case "attempt": return "#" + d.attempt + " on " + d.consumer + ": " + d.outcome +
        (d.duration_ms !== null && d.duration_ms !== undefined ? " in " + d.duration_ms + " ms" : "") +
        (d.error ? " (" + d.error + ")" : "");
      case "retried": return "by " + d.by + (d.bulk ? " (bulk)" : "") + ": “" + d.reason + "”";
      case "user_created": return "user " + d.user_id;
      case "failed": return (d.error_code || "") + (d.error ? ": " + d.error : "");
      case "email_failed": return "after " + d.attempts + " attempt(s)" + (d.error ? ": " + d.error : "");
      default: return d.attempts ? d.attempts + " attempt(s)" : "";
    }
  }

  function openStory(id) {
    var drawer = $("req-drawer");
    $("drawer-title").textContent = "Request " + id;
    $("drawer-facts").textContent = "";
    $("drawer-timeline").textContent = "";
    $("drawer-msg").hidden = true;
    openDialog(drawer);
    $("drawer-close").focus();
    api("/api/admin/requests/" + encodeURIComponent(id)).then(function (r) {
      var req = r.request;
      var facts = $("drawer-facts");
      [["Email", req.email], ["Name", req.full_name], ["Status", req.status], ["Mode", req.mode],
       ["Caller", req.actor], ["Attempts", String(req.attempts)], ["Trace", r.trace_id || "–"]]
        .forEach(function (pair) {
          var row = el("div");
          row.appendChild(el("dt", null, pair[0]));
          row.appendChild(el("dd", null, pair[1]));
          facts.appendChild(row);
        });
      var list = $("drawer-timeline");
      r.timeline.forEach(function (step) {
        var li = el("li", "step step-" + step.kind);
        var time = el("time", "step-at", fmtTime(step.at));
        time.dateTime = step.at;
        li.appendChild(time);
        li.appendChild(el("strong", "step-kind", KIND_WORDS[step.kind] || step.kind));
        li.appendChild(el("span", "step-detail", describeStep(step)));
        list.appendChild(li);
      });
    }, function (err) {
      message("drawer-msg", "bad", "Could not load the request: " + session.describe(err));
    });
  }

  // ------------------------------------------------------------------ bulk retry

  function openBulk() {
    C.bulkFilter = Object.assign({}, C.filter);
    var desc = Object.keys(C.bulkFilter).length
      ? Object.keys(C.bulkFilter).map(function (k) { return k + " = " + C.bulkFilter[k]; }).join(", ")
      : "every request (no filter)";
    $("bulk-filter").textContent = "Filter: " + desc;
    $("bulk-numbers").textContent = "Counting (dry run)…";
    $("bulk-error").textContent = "";
    $("bulk-confirm").disabled = true;
    openDialog($("bulk-dialog"));
    $("bulk-reason").focus();
    api("/api/admin/requests/retry", { method: "POST", json: { filter: C.bulkFilter, reason: "dry run",
                                                              dry_run: true } })
      .then(function (r) {
        var n = r;
        var dl = $("bulk-numbers");
        dl.textContent = "";
        [["Match", n.matched], ["Would be retried", n.would_retry], ["Already have an account", n.already_created],
         ["Already got the welcome email", n.emails_already_sent]].forEach(function (pair) {
          var row = el("div");
          row.appendChild(el("dt", null, pair[0]));
          row.appendChild(el("dd", "bulk-" + pair[0].split(" ")[0].toLowerCase(), String(pair[1])));
          dl.appendChild(row);
        });
        $("bulk-confirm").disabled = n.would_retry === 0;
        $("bulk-confirm").textContent = "Retry " + n.would_retry + " request" + (n.would_retry === 1 ? "" : "s");
      }, function (err) {
        $("bulk-numbers").textContent = "";
        $("bulk-error").textContent = "Dry run refused: " + session.describe(err);
      });
  }

  function submitBulk(ev) {
    ev.preventDefault();
    var reason = $("bulk-reason").value.trim();
    if (reason.length < 3 || reason.length > 500) {
      $("bulk-error").textContent = "Give a reason of 3 to 500 characters.";
      $("bulk-reason").setAttribute("aria-invalid", "true");
      $("bulk-reason").focus();
      return;
    }
    $("bulk-reason").removeAttribute("aria-invalid");
    $("bulk-confirm").disabled = true;
    api("/api/admin/requests/retry", { method: "POST", json: { filter: C.bulkFilter, reason: reason } })
      .then(function (r) {
        closeDialog($("bulk-dialog"));
        $("bulk-reason").value = "";
        message("req-msg", "ok", "Retried " + r.retried + ", skipped " + r.skipped + ".");
        watchProgress(r.retried);
        loadAudit(false);
      }, function (err) {
        $("bulk-confirm").disabled = false;
        $("bulk-error").textContent = "Not retried: " + session.describe(err);
      });
  }

  function watchProgress(retried) {
    if (C.progressTimer) { clearInterval(C.progressTimer); }
    var node = $("bulk-progress");
    node.hidden = retried === 0;
    if (!retried) { return; }
    function poll() {
      api("/api/admin/system/metrics").then(function (r) {
        var t = r.totals || {};
        node.textContent = "Bulk retry progress: " + (t.pending || 0) + " pending, " + (t.created || 0) +
          " created, " + (t.failed || 0) + " failed (all requests).";
        if (!t.pending) {
          node.textContent += " Done.";
          clearInterval(C.progressTimer);
          C.progressTimer = null;
          search(false);
        }
      }, function () {});
    }
    poll();
    C.progressTimer = setInterval(poll, 2000);
  }

  // ------------------------------------------------------------------ audit

  function loadAudit(older) {
    var params = new URLSearchParams({ limit: "20" });
    if (older && C.auditOldest) { params.set("after_id", String(C.auditOldest)); }
    C.auditPaged = C.auditPaged || older;
    api("/api/admin/audit?" + params.toString()).then(function (r) {
      var body = $("audit-rows");
      if (!older) { body.textContent = ""; }
      r.items.forEach(function (item) {
        var tr = el("tr");
        var change = (item.before ? JSON.stringify(item.before) : "–") + " → " +
          (item.after ? JSON.stringify(item.after) : "–");
        [fmtTime(item.at), item.actor, item.action, item.reason || "–", change].forEach(function (text, i) {
          tr.appendChild(el("td", i === 4 ? "cell-change" : null, text));
        });
        body.appendChild(tr);
        C.auditOldest = item.id;
      });
      $("audit-more").hidden = r.items.length < 20;
      $("audit-empty").hidden = body.children.length > 0;
    }, function (err) {
      message("audit-msg", "bad", "Audit trail unavailable: " + session.describe(err));
    });
  }

  // ------------------------------------------------------------------ limits

  function renderLimits(limits) {
    C.limits = limits;
    $("lim-current").textContent = limits.rate_limit_max + " job starts per " + limits.rate_limit_duration_ms +
      " ms across all consumers; " + limits.concurrency + " jobs at once per consumer" +
      (limits.version ? " — version " + limits.version + ", by " + limits.updated_by + " (" +
        fmtTime(limits.updated_at) + "): “" + limits.reason + "”" : " — configured defaults");
    var form = $("limits-form");
    if (!form.contains(document.activeElement)) {
      $("lim-max").value = limits.rate_limit_max;
      $("lim-ms").value = limits.rate_limit_duration_ms;
      $("lim-conc").value = limits.concurrency;
    }
  }

  function submitLimits(ev) {
    ev.preventDefault();
    if (!C.limits) { return; }
    var body = { rate_limit_max: Number($("lim-max").value), rate_limit_duration_ms: Number($("lim-ms").value),
                 concurrency: Number($("lim-conc").value), reason: $("lim-reason").value.trim(),
                 expected_version: C.limits.version };
    $("lim-save").disabled = true;
    api("/api/admin/system/limits", { method: "POST", json: body }).then(function (r) {
      $("lim-save").disabled = false;
      $("lim-reason").value = "";
      renderLimits(r);
      message("lim-msg", "ok", "Saved (version " + r.version + "); consumers follow within 2 s.");
      loadAudit(false);
    }, function (err) {
      $("lim-save").disabled = false;
      var fields = (err.details && err.details.map) ? err.details.map(function (d) { return d.field; }).join(", ") : "";
      message("lim-msg", "bad", (err.status === 409 ? "Not saved: changed by someone else meanwhile; reloaded. "
                                                    : "Not saved: ") + err.message + (fields ? " — " + fields : ""));
      if (err.status === 409) { refresh(); }
    });
  }

  // ------------------------------------------------------------------ kill switch extras

  function renderCountdown() {
    var node = $("sw-countdown");
    var st = C.mode;
    if (!st || !st.revert_at) { node.hidden = true; return; }
    var left = (new Date(st.revert_at).getTime() - Date.now()) / 1000;
    node.hidden = false;
    node.textContent = left > 0
      ? "Returns to " + st.revert_to + " by itself in " + fmtLeft(left) + " (at " + fmtTime(st.revert_at) + ")."
      : "Returning to " + st.revert_to + " now…";
  }

  function previewInFlight() {
    var node = $("mode-preview");
    node.textContent = "Counting the work in flight…";
    api("/api/admin/system/metrics").then(function (r) {
      var q = r.queue;
      var toSync = r.mode !== "sync_direct";
      if (!q) {
        node.textContent = "Redis is unavailable: the queue cannot be counted. " +
          (toSync ? "New requests will be created directly." : "");
        return;
      }
      node.textContent = "In flight now: " + q.waiting + " waiting, " + q.active + " active, " + q.delayed +
        " delayed. " + (toSync
          ? "They stay in the queue and the consumers keep finishing them; only new requests are created directly."
          : "They keep going; new requests are queued again.");
    }, function () { node.textContent = ""; });
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    $("req-form").addEventListener("submit", function (ev) { ev.preventDefault(); search(false); });
    $("req-more").addEventListener("click", function () { search(true); });
    $("req-bulk").addEventListener("click", openBulk);
    $("drawer-close").addEventListener("click", function () { closeDialog($("req-drawer")); });
    $("bulk-form").addEventListener("submit", submitBulk);
    $("bulk-cancel").addEventListener("click", function () { closeDialog($("bulk-dialog")); });
    $("audit-more").addEventListener("click", function () { loadAudit(true); });
    $("limits-form").addEventListener("submit", submitLimits);
    $("switch-btn").addEventListener("click", previewInFlight);
    // app.js shows #panel once the token works: react before the next paint, so a viewer never sees an action.
    new MutationObserver(watchSession).observe($("panel"), { attributes: true, attributeFilter: ["hidden"] });
    setInterval(watchSession, 500);
    setInterval(refresh, REFRESH_MS);
    setInterval(renderCountdown, 1000);
    watchSession();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
