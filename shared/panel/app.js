/* System Health panel: plain JS, no framework, no build step.
 *
 * Served under a strict CSP (script-src 'self', style-src 'self', connect-src 'self'): no inline script or
 * style, no style attributes; every visual state is a class or the `hidden` attribute.
 *
 * Query parameters (for tests and demos):
 *   ?refresh=N   auto-refresh interval in seconds (1-300, default 5).
 * URL fragment:
 *   #token=<jwt> signs in with that token (then removed from the address bar).
 *
 * Refreshes never rebuild what the admin is using: log rows and failed-request rows are keyed by id and only
 * added/updated/removed; open dialogs, typed text and expanded rows survive every refresh.
 */
(function () {
  "use strict";

  var MAX_LOGS = 200;
  var FIRST_LOGS = 50;
  var INCREMENTAL_LOGS = 200;
  var STALE_AFTER_S = 3;

  // effective_reason in words: the state, and "because ..." for the fallback explanations.
  var REASONS = {
    configured: "as configured",
    manual: "manual kill switch",
    redis_unavailable: "automatic fallback: Redis unavailable",
    no_consumer: "automatic fallback: no consumer alive"
  };
  var BECAUSE = {
    redis_unavailable: "because Redis is unavailable",
    no_consumer: "because no consumer is alive"
  };

  var S = {
    token: null,
    signedIn: false,
    generation: 0,
    refreshMs: readRefreshMs(),
    paused: false,
    timer: null,
    inFlight: false,
    again: false,
    lastOk: null,
    lastAttempt: null,
    mode: null,
    olderModeSince: null,
    authPending: null,
    metrics: null,
    logs: new Map(),
    logRows: new Map(),
    maxLogId: 0,
    logLevel: "",
    logGen: 0,
    expanded: new Set(),
    failedRows: new Map(),
    failedItems: new Map(),
    switchTarget: null,
    switchReasonFor: null,
    retryTarget: null,
    chartWidth: 0
  };

  // ------------------------------------------------------------------ helpers

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function svg(tag, attrs) {
    var node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    return node;
  }

  function setText(id, text) {
    var node = $(id);
    var value = text === null || text === undefined ? "–" : String(text);
    if (node.textContent !== value) { node.textContent = value; }
  }

  function show(node, visible) {
    if (typeof node === "string") { node = $(node); }
    if (node.hidden === visible) { node.hidden = !visible; }
  }

  function readRefreshMs() {
    var raw = new URLSearchParams(window.location.search).get("refresh");
    var n = raw === null ? NaN : Number(raw);
    if (!isFinite(n) || n < 1 || n > 300) { return 5000; }
    return Math.round(n * 1000);
  }

  function now() { return Date.now() + window.ProvisionerSession.clockSkewMs(); }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function fmtTime(iso) {
    if (!iso) { return "–"; }
    var d = new Date(iso);
    if (isNaN(d.getTime())) { return String(iso); }
    var t = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    var today = new Date(now());
    if (d.toDateString() === today.toDateString()) { return t; }
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + t;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) { return "–"; }
    var s = Math.max(0, Math.round(seconds));
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min " + (s % 60) + " s"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min"; }
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function ago(iso) {
    if (!iso) { return "never"; }
    var t = new Date(iso).getTime();
    if (isNaN(t)) { return String(iso); }
    var s = (now() - t) / 1000;
    if (s < 2) { return "just now"; }
    return fmtDuration(s) + " ago";
  }

  function fmtNumber(n) {
    if (n === null || n === undefined) { return "–"; }
    return Number(n).toLocaleString("en-US");
  }

  // ------------------------------------------------------------------ API and session (session.js)

  var session = window.ProvisionerSession;
  var describeError = session.describe;
  var isAuthError = session.isAuthError;

  var api = session.request;

  function authMessage(err) {
    if (err.status === 403) {
      return "This token is not an admin's (403): it is valid, but its role may not use the System Health " +
             "panel. Sign in with an admin token.";
    }
    return "The token was refused (401): it is missing, expired or invalid. Paste a fresh admin token.";
  }

  function signIn(token) {
    if (!session.accept(token, "Paste an admin token first.")) { return; }
    S.token = session.token();
    S.generation += 1;
    S.signedIn = false;
    S.inFlight = false;
    S.again = false;
    refreshAll();
  }

  function anyDialogOpen() { return $("mode-dialog").open || $("retry-dialog").open; }

  function signOut(message) {
    S.authPending = null;
    S.generation += 1;
    S.token = null;
    stopTimer();
    S.signedIn = false;
    S.inFlight = false;
    S.again = false;
    closeDialog($("mode-dialog"));
    closeDialog($("retry-dialog"));
    clearData();
    session.showSignIn("panel", message);
  }

  function enterPanel() {
    S.signedIn = true;
    session.showPage("panel");
    updatePauseButton();
  }

  function clearData() {
    S.mode = null;
    S.olderModeSince = null;
    S.metrics = null;
    S.lastOk = null;
    S.logs.clear();
    S.logRows.clear();
    S.maxLogId = 0;
    S.logGen += 1;
    S.expanded.clear();
    S.failedRows.clear();
    S.failedItems.clear();
    $("log-list").textContent = "";
    $("failed-rows").textContent = "";
    $("chart").textContent = "";
    $("chart-rows").textContent = "";
    $("st-consumers").textContent = "";
    $("banner-list").textContent = "";
    show("banner", false);
    show("stale", false);
    ["st-mode", "st-effective", "st-redis", "st-workers", "st-oldest", "st-rate", "sw-mode", "sw-last",
     "q-waiting", "q-active", "q-completed", "q-failed", "q-delayed", "t-created", "t-failed", "t-pending",
     "t-fallbacks", "t-emails-pending", "t-emails-failed"].forEach(function (id) { setText(id, null); });
    setText("verdict", "…");
    setText("chart-summary", "");
    setText("log-count", "");
    setText("failed-count", "");
    $("sw-explain").textContent = "";
    show("switch-msg", false);
    show("failed-msg", false);
  }

  // ------------------------------------------------------------------ refresh loop

  function stopTimer() {
    if (S.timer !== null) { clearTimeout(S.timer); S.timer = null; }
  }

  function schedule() {
    stopTimer();
    if (!S.token || S.paused || document.hidden) { return; }
    S.timer = setTimeout(function () { S.timer = null; refreshAll(); }, S.refreshMs);
  }

  function requestRefresh() {
    if (S.inFlight) { S.again = true; return; }
    refreshAll();
  }

  function logsRequest() {
    var params = new URLSearchParams();
    var incremental = S.maxLogId > 0;
    params.set("limit", String(incremental ? INCREMENTAL_LOGS : FIRST_LOGS));
    if (S.logLevel) { params.set("level", S.logLevel); }
    if (incremental) { params.set("after_id", String(S.maxLogId)); }
    return { path: "/api/admin/system/logs?" + params.toString(), gen: S.logGen };
  }

  function refreshAll() {
    if (!S.token) { return Promise.resolve(); }
    if (S.inFlight) { S.again = true; return Promise.resolve(); }
    stopTimer();
    S.inFlight = true;
    S.lastAttempt = Date.now();
    var gen = S.generation;
    var logReq = logsRequest();
    if (window.PanelAlerts) { window.PanelAlerts.refresh(api); }
    var parts = [
      ["metrics", api("/api/admin/system/metrics")],
      ["mode", api("/api/admin/system/mode")],
      ["logs", api(logReq.path)],
      ["failed requests", api("/api/admin/requests?status=failed&limit=50")]
    ];
    return Promise.allSettled(parts.map(function (p) { return p[1]; })).then(function (results) {
      if (gen !== S.generation) { return; }  // signed out or in again meanwhile: drop
      S.inFlight = false;
      var auth = null;
      var failures = [];
      results.forEach(function (r, i) {
        if (r.status === "rejected") {
          if (isAuthError(r.reason)) { auth = auth || r.reason; } else { failures.push([parts[i][0], r.reason]); }
        }
      });
      if (auth) {
        if (S.signedIn && anyDialogOpen()) {
          // Do not throw away what the admin is typing: stop polling, say why, sign out when the dialog closes.
          S.authPending = auth;
          S.paused = true;
          updatePauseButton();
          $("stale").textContent = authMessage(auth) + " Close the dialog to sign in again.";
          show("stale", true);
          return;
        }
        signOut(authMessage(auth));
        return;
      }
      if (!S.signedIn) {
        if (failures.length === parts.length) {
          // Nothing answered: we cannot tell whether the token works. Say so on the sign-in form.
          $("signin-btn").disabled = false;
          setText("signin-status", "");
          session.showAuthMessage("Could not load the panel: " + describeError(failures[0][1]) + ". Try again.");
          return;
        }
        enterPanel();
      }
      if (results[0].status === "fulfilled") { S.metrics = results[0].value; }
      if (results[1].status === "fulfilled") { acceptMode(results[1].value); }
      safely(renderStatus);
      safely(renderSwitch);
      if (results[0].status === "fulfilled") { safely(function () { renderQueue(S.metrics); }); }
      if (results[2].status === "fulfilled" && logReq.gen === S.logGen) {
        safely(function () { mergeLogs(results[2].value.items || []); });
      }
      if (results[3].status === "fulfilled") { safely(function () { renderFailed(results[3].value.items || []); }); }
      if (failures.length === 0) {
        S.lastOk = Date.now();
        show("stale", false);
      } else {
        var what = failures.map(function (f) { return f[0] + ": " + describeError(f[1]); }).join("; ");
        $("stale").textContent = "Refresh failed (" + what + "). " +
          (S.lastOk ? "Showing the data last loaded at " + fmtTime(new Date(S.lastOk).toISOString()) + "."
                    : "Some data could not be loaded yet.") + " Retrying automatically.";
        show("stale", true);
      }
      tick();
    }).finally(function () {
      if (gen !== S.generation) { return; }
      S.inFlight = false;
      if (S.again) { S.again = false; refreshAll(); return; }
      schedule();
    });
  }

  // Each function instance caches the switch for up to MODE_CACHE_TTL_S (<= 2 s): right after a switch, a refresh
  // may still answer the previous version. Keep the newer state unless the older one persists (e.g. a DB restore).
  function acceptMode(state) {
    if (S.mode && typeof state.version === "number" && state.version < S.mode.version) {
      if (S.olderModeSince === null) { S.olderModeSince = Date.now(); }
      if (Date.now() - S.olderModeSince < 5000) { return; }
    }
    S.olderModeSince = null;
    S.mode = state;
  }

  function safely(fn) {
    try { fn(); } catch (e) {
      if (window.console) { window.console.error("render failed", e); }
    }
  }

  function tick() {
    if (!S.signedIn) { return; }
    var label;
    if (S.lastOk === null) {
      label = "Not loaded yet";
    } else {
      var s = Math.max(0, Math.floor((Date.now() - S.lastOk) / 1000));
      label = "Updated " + (s < 1 ? "just now" : s + " s ago");
    }
    if (S.paused) { label += " · auto-refresh paused"; }
    var node = $("updated");
    if (node.textContent !== label) { node.textContent = label; }
    var stale = S.lastOk !== null && (Date.now() - S.lastOk) > S.refreshMs + STALE_AFTER_S * 1000;
    node.classList.toggle("updated-stale", stale);
  }

  function updatePauseButton() {
    var btn = $("pause-btn");
    btn.setAttribute("aria-pressed", S.paused ? "true" : "false");
    btn.textContent = S.paused ? "Resume updates" : "Pause updates";
    tick();
  }

  // ------------------------------------------------------------------ status + banner

  function problems(m) {
    var list = [];
    if (!m) { return list; }
    if (m.effective_mode && m.mode && m.effective_mode !== m.mode) {
      list.push("Fallback active: users are created directly in the request (" + m.effective_mode +
                ") although the switch says " + m.mode + ", " +
                (BECAUSE[m.effective_reason] || "because of " + m.effective_reason) + ".");
    }
    if (m.redis && m.redis.available === false) {
      list.push("Redis is unavailable: nothing can be queued; queue counts are unknown.");
    }
    if (m.mode === "async_queue" && m.redis && m.redis.available && m.workers && m.workers.alive === 0) {
      list.push("No consumer is alive: queued jobs are not being processed.");
    }
    return list;
  }

  function renderStatus() {
    var m = S.metrics;
    var mode = S.mode;
    if (!m && !mode) { return; }
    var configured = (mode && mode.mode) || (m && m.mode);
    var effective = (m && m.effective_mode) || (mode && mode.effective_mode);
    var reason = (m && m.effective_reason) || (mode && mode.effective_reason);
    setText("st-mode", configured === "sync_direct" ? "sync_direct (kill switch on)" : configured);
    setText("st-effective", effective + " — " + (REASONS[reason] || reason || "unknown"));
    $("st-effective").classList.toggle("bad", !!effective && effective !== configured);

    var issues = problems(m);
    var verdict = $("verdict");
    var cls;
    var text;
    if (issues.length) {
      cls = "verdict-bad";
      if (effective !== configured) {
        text = "Degraded: automatic fallback to " + effective + " " + (BECAUSE[reason] || "(" + reason + ")") +
               ". Users are still created, directly in the request.";
      } else if (m.redis && !m.redis.available) {
        text = "Degraded: Redis is unavailable. " + (configured === "sync_direct"
          ? "The kill switch is on, so users are still created directly." : "Queueing is not possible.");
      } else {
        text = "Degraded: no consumer is alive, queued requests are not processed.";
      }
    } else if (configured === "sync_direct") {
      cls = "verdict-warn";
      text = "Kill switch on: users are created directly in the request (201); the queue is bypassed.";
    } else {
      cls = "verdict-ok";
      var n = m && m.workers ? m.workers.alive : 0;
      text = "Healthy: requests are queued (202) and " + n + " consumer" + (n === 1 ? " is" : "s are") +
             " processing them.";
    }
    if (m && m.oldest_waiting_age_s !== null && m.oldest_waiting_age_s > 60 && !issues.length) {
      cls = "verdict-warn";
      text += " But the oldest waiting job is " + fmtDuration(m.oldest_waiting_age_s) + " old.";
    }
    verdict.className = "verdict " + cls;
    if (verdict.textContent !== text) { verdict.textContent = text; }

    var list = $("banner-list");
    var key = issues.join("\n");
    if (list.dataset.key !== key) {
      list.dataset.key = key;
      list.textContent = "";
      issues.forEach(function (t) { list.appendChild(el("li", null, t)); });
    }
    show("banner", issues.length > 0);

    if (!m) { return; }
    var redis = $("st-redis");
    if (m.redis && m.redis.available) {
      var lat = m.redis.latency_ms;
      setText("st-redis", "available · " + (lat === null || lat === undefined ? "?" : lat.toFixed(lat < 10 ? 1 : 0)) +
                          " ms");
      redis.classList.remove("bad");
    } else {
      setText("st-redis", "UNAVAILABLE");
      redis.classList.add("bad");
    }
    var workers = m.workers || { alive: 0, items: [] };
    var redisUp = !!(m.redis && m.redis.available);
    setText("st-workers", redisUp ? String(workers.alive) : "unknown (Redis unavailable)");
    $("st-workers").classList.toggle("bad", redisUp && workers.alive === 0 && configured === "async_queue");
    setText("st-oldest", m.oldest_waiting_age_s === null ? "none waiting" : fmtDuration(m.oldest_waiting_age_s));
    $("st-oldest").classList.toggle("warn", m.oldest_waiting_age_s !== null && m.oldest_waiting_age_s > 60);
    if (m.rate_limit) {
      setText("st-rate", m.rate_limit.max + " job starts per " + (m.rate_limit.duration_ms >= 1000 && m.rate_limit.duration_ms % 1000 === 0
        ? (m.rate_limit.duration_ms / 1000) + " s" : m.rate_limit.duration_ms + " ms") + " (all consumers)");
    }
    renderConsumers(workers.items || []);
  }

  function renderConsumers(items) {
    var ul = $("st-consumers");
    var existing = new Map();
    Array.prototype.forEach.call(ul.children, function (li) { existing.set(li.dataset.name, li); });
    var keep = new Set();
    items.forEach(function (c, i) {
      var li = existing.get(c.name);
      if (!li) {
        li = el("li", "consumer");
        li.dataset.name = c.name;
        li.appendChild(el("span", "consumer-name", c.name));
        li.appendChild(el("span", "consumer-seen"));
      }
      var text = "seen " + ago(c.last_seen) + " · last job " + (c.last_job_at ? ago(c.last_job_at) : "none yet");
      var seen = li.querySelector(".consumer-seen");
      if (seen.textContent !== text) { seen.textContent = text; }
      if (ul.children[i] !== li) { ul.insertBefore(li, ul.children[i] || null); }
      keep.add(c.name);
    });
    existing.forEach(function (li, name) { if (!keep.has(name)) { li.remove(); } });
  }

  // ------------------------------------------------------------------ kill switch

  function renderSwitch() {
    var st = S.mode;
    if (!st) { return; }
    var pill = $("sw-mode");
    setText("sw-mode", st.mode);
    pill.className = "mode-pill " + (st.mode === "sync_direct" ? "mode-sync" : "mode-async");
    var btn = $("switch-btn");
    var target = st.mode === "sync_direct" ? "async_queue" : "sync_direct";
    var label = target === "sync_direct" ? "Turn kill switch on (switch to sync_direct)…"
                                         : "Turn kill switch off (back to async_queue)…";
    if (btn.textContent !== label) { btn.textContent = label; }
    btn.className = "btn " + (target === "sync_direct" ? "btn-danger-outline" : "btn-primary");
    btn.dataset.target = target;
    btn.disabled = false;
    var explain = st.mode === "sync_direct"
      ? "Kill switch is ON: every request creates the user directly (201), the queue is bypassed."
      : "Kill switch is off: requests are queued (202) and consumers create the users.";
    if ($("sw-explain").textContent !== explain) { $("sw-explain").textContent = explain; }
    var last = "by " + (st.updated_by || "?") + ", " + ago(st.updated_at) + " (" + fmtTime(st.updated_at) + ")" +
               " — version " + st.version + (st.reason ? " — reason: “" + st.reason + "”" : " — no reason given");
    setText("sw-last", last);
  }

  function openModeDialog() {
    if (!S.mode) { return; }
    var target = $("switch-btn").dataset.target;
    S.switchTarget = { mode: target, version: S.mode.version, from: S.mode.mode };
    var reason = $("mode-reason");
    if (S.switchReasonFor !== target) { reason.value = ""; }
    S.switchReasonFor = target;
    updateCounter("mode-reason", "mode-reason-count");
    $("mode-error").textContent = "";
    $("mode-dialog-h").textContent = "Switch to " + target + "?";
    $("mode-dialog-desc").textContent = target === "sync_direct"
      ? "Kill switch ON: every creation request will create the user inside the request (201) instead of queueing " +
        "it. Use it when Redis or the consumers are in trouble or under maintenance."
      : "Kill switch OFF: creation requests will be queued again (202) and created by the consumers.";
    $("mode-confirm").textContent = "Switch to " + target;
    $("mode-confirm").className = "btn " + (target === "sync_direct" ? "btn-danger" : "btn-primary");
    $("mode-confirm").disabled = false;
    openDialog($("mode-dialog"));
  }

  function validReason(value) {
    var v = value.trim();
    if (v.length < 3) { return "Give a reason of at least 3 characters."; }
    if (v.length > 500) { return "The reason must be at most 500 characters."; }
    return null;
  }

  function submitMode(ev) {
    ev.preventDefault();
    var target = S.switchTarget;
    if (!target) { return; }
    var reasonField = $("mode-reason");
    var problem = validReason(reasonField.value);
    if (problem) {
      $("mode-error").textContent = problem;
      reasonField.setAttribute("aria-invalid", "true");
      reasonField.focus();
      return;
    }
    reasonField.removeAttribute("aria-invalid");
    $("mode-error").textContent = "";
    var confirm = $("mode-confirm");
    confirm.disabled = true;
    var gen = S.generation;
    var body = { mode: target.mode, reason: reasonField.value.trim(), expected_version: target.version };
    var revert = $("mode-revert") ? $("mode-revert").value : "";
    if (revert) { body.revert_after_s = Number(revert); }
    api("/api/admin/system/mode", { method: "POST", json: body })
      .then(function (state) {
        if (gen !== S.generation) { return; }
        acceptMode(state);
        reasonField.value = "";
        S.switchReasonFor = null;
        closeDialog($("mode-dialog"));
        switchMessage("ok", "Switched to " + state.mode + " (version " + state.version + ").");
        renderSwitch();
        renderStatus();
        requestRefresh();
      }, function (err) {
        if (gen !== S.generation) { return; }
        confirm.disabled = false;
        if (isAuthError(err)) { signOut(authMessage(err)); return; }
        if (err.status === 409 && err.code === "stale_version") {
          var current = err.details && err.details.current;
          closeDialog($("mode-dialog"));
          switchMessage("bad", "Not switched: the mode was changed by " + (current ? current.updated_by : "another admin") +
            " meanwhile (now " + (current ? current.mode + ", version " + current.version : "changed") +
            "). Nothing was overwritten; the panel reloaded the current state — check it before switching again.");
          if (current) { acceptMode(Object.assign({}, S.mode, current)); renderSwitch(); }
          requestRefresh();
          return;
        }
        $("mode-error").textContent = "Not switched: " + describeError(err);
      });
  }

  function switchMessage(kind, text) {
    var node = $("switch-msg");
    node.className = "notice " + (kind === "ok" ? "notice-ok" : "notice-bad");
    node.textContent = text;
    show(node, true);
  }

  // ------------------------------------------------------------------ dialogs

  function openDialog(dialog) {
    if (dialog.open) { return; }
    if (typeof dialog.showModal === "function") { dialog.showModal(); } else { dialog.setAttribute("open", ""); }
    var field = dialog.querySelector("textarea");
    if (field) { field.focus(); }
  }

  function closeDialog(dialog) {
    if (!dialog.open) { return; }
    if (typeof dialog.close === "function") { dialog.close(); } else { dialog.removeAttribute("open"); }
  }

  function updateCounter(fieldId, counterId) {
    var n = $(fieldId).value.length;
    var text = n + " / 500";
    if ($(counterId).textContent !== text) { $(counterId).textContent = text; }
  }

  // ------------------------------------------------------------------ queue + chart

  function renderQueue(m) {
    var q = m.queue;
    ["waiting", "active", "completed", "failed", "delayed"].forEach(function (k) {
      setText("q-" + k, q ? fmtNumber(q[k]) : "n/a");
    });
    $("q-failed").parentNode.classList.toggle("tile-bad", !!q && q.failed > 0);
    $("q-waiting").parentNode.classList.toggle("tile-warn", !!q && q.waiting > 0 && m.workers && m.workers.alive === 0);
    var t = m.totals || {};
    setText("t-created", fmtNumber(t.created));
    setText("t-failed", fmtNumber(t.failed));
    setText("t-pending", fmtNumber(t.pending));
    setText("t-fallbacks", fmtNumber(t.fallbacks_last_hour));
    setText("t-emails-pending", fmtNumber(t.emails_pending));
    setText("t-emails-failed", fmtNumber(t.emails_failed));
    $("t-failed").parentNode.classList.toggle("tile-bad", (t.failed || 0) > 0);
    $("t-fallbacks").parentNode.classList.toggle("tile-warn", (t.fallbacks_last_hour || 0) > 0);
    $("t-emails-failed").parentNode.classList.toggle("tile-bad", (t.emails_failed || 0) > 0);
    renderChart(m.history || []);
  }

  function minuteKey(ms) { return new Date(ms).toISOString().slice(0, 16) + ":00Z"; }

  function buckets(history) {
    var byMinute = new Map();
    history.forEach(function (h) { byMinute.set(h.minute, h); });
    var end = Math.floor(now() / 60000) * 60000;
    var out = [];
    for (var i = 59; i >= 0; i -= 1) {
      var t = end - i * 60000;
      var h = byMinute.get(minuteKey(t));
      out.push({ t: t, completed: h ? h.completed : 0, failed: h ? h.failed : 0, retried: h ? h.retried : 0 });
    }
    return out;
  }

  function niceMax(v) {
    if (v <= 4) { return 4; }
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i += 1) { if (steps[i] * p >= v) { return steps[i] * p; } }
    return 10 * p;
  }

  function hhmm(ms) { var d = new Date(ms); return pad(d.getHours()) + ":" + pad(d.getMinutes()); }

  function renderChart(history) {
    var data = buckets(history);
    S.lastHistory = history;
    var box = $("chart");
    var W = Math.max(280, Math.floor(box.clientWidth || 600));
    S.chartWidth = W;
    var H = W < 500 ? 150 : 180;
    var m = { l: 34, r: 8, t: 10, b: 22 };
    var pw = W - m.l - m.r;
    var ph = H - m.t - m.b;
    var total = { completed: 0, failed: 0, retried: 0 };
    var peak = { v: 0, t: null };
    data.forEach(function (d) {
      total.completed += d.completed; total.failed += d.failed; total.retried += d.retried;
      if (d.completed + d.failed > peak.v) { peak = { v: d.completed + d.failed, t: d.t }; }
    });
    var ymax = niceMax(peak.v);
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img",
                            "aria-labelledby": "chart-svg-title chart-svg-desc", "class": "chart-svg" });
    var title = svg("title", { id: "chart-svg-title" });
    title.textContent = "Jobs finished per minute over the last hour";
    var summary = "Last hour: " + total.completed + " completed, " + total.failed + " failed" +
      (total.retried ? ", " + total.retried + " retried" : "") +
      (peak.v ? "; busiest minute " + hhmm(peak.t) + " with " + peak.v + " finished." : "; no job finished.");
    var desc = svg("desc", { id: "chart-svg-desc" });
    desc.textContent = summary;
    root.appendChild(title);
    root.appendChild(desc);
    [0, 0.5, 1].forEach(function (f) {
      var y = m.t + ph - f * ph;
      root.appendChild(svg("line", { x1: m.l, x2: W - m.r, y1: y, y2: y, "class": f === 0 ? "axis" : "grid" }));
      var label = svg("text", { x: m.l - 6, y: y + 4, "class": "tick", "text-anchor": "end" });
      label.textContent = String(Math.round(ymax * f * 10) / 10);
      root.appendChild(label);
    });
    var slot = pw / data.length;
    var bw = Math.max(1, slot - (slot > 6 ? 2 : 1));
    data.forEach(function (d, i) {
      if (!d.completed && !d.failed) { return; }
      var g = svg("g", {});
      var x = m.l + i * slot + (slot - bw) / 2;
      var hc = d.completed / ymax * ph;
      var hf = d.failed / ymax * ph;
      var base = m.t + ph;
      if (d.completed) { g.appendChild(svg("rect", { x: x, y: base - hc, width: bw, height: hc, "class": "bar-completed" })); }
      if (d.failed) { g.appendChild(svg("rect", { x: x, y: base - hc - hf, width: bw, height: hf, "class": "bar-failed" })); }
      var tip = svg("title", {});
      tip.textContent = hhmm(d.t) + ": " + d.completed + " completed, " + d.failed + " failed" +
                        (d.retried ? ", " + d.retried + " retried" : "");
      g.appendChild(tip);
      root.appendChild(g);
    });
    [[0, "−60 min", "start"], [30, "−30 min", "middle"], [59, "now", "end"]].forEach(function (a) {
      var x = a[0] === 59 ? W - m.r : m.l + a[0] * slot + (a[0] ? slot / 2 : 0);
      var label = svg("text", { x: x, y: H - 6, "class": "tick", "text-anchor": a[2] });
      label.textContent = a[1];
      root.appendChild(label);
    });
    if (!peak.v) {
      var empty = svg("text", { x: m.l + pw / 2, y: m.t + ph / 2, "class": "chart-empty", "text-anchor": "middle" });
      empty.textContent = "No job finished in the last hour";
      root.appendChild(empty);
    }
    box.replaceChildren(root);
    setText("chart-summary", summary);
    var rows = $("chart-rows");
    var key = JSON.stringify(history);
    if (rows.dataset.key !== key) {
      rows.dataset.key = key;
      rows.textContent = "";
      var active = data.filter(function (d) { return d.completed || d.failed || d.retried; });
      if (!active.length) {
        var tr = el("tr");
        var td = el("td", null, "No activity in the last hour.");
        td.colSpan = 4;
        tr.appendChild(td);
        rows.appendChild(tr);
      }
      active.slice().reverse().forEach(function (d) {
        var row = el("tr");
        row.appendChild(el("td", null, hhmm(d.t)));
        row.appendChild(el("td", null, d.completed));
        row.appendChild(el("td", null, d.failed));
        row.appendChild(el("td", null, d.retried));
        rows.appendChild(row);
      });
    }
  }

  // ------------------------------------------------------------------ health log

  function buildLogRow(item) {
    var li = el("li", "log-row level-" + item.level);
    li.dataset.id = String(item.id);
    var head = el("div", "log-head");
    head.appendChild(el("span", "badge badge-" + item.level, item.level));
    var time = el("time", "log-time", fmtTime(item.created_at));
    time.setAttribute("datetime", item.created_at);
    time.title = item.created_at;
    head.appendChild(time);
    head.appendChild(el("code", "log-event", item.event));
    head.appendChild(el("span", "log-message", item.message));
    li.appendChild(head);
    var meta = item.metadata;
    var hasMeta = meta && typeof meta === "object" && Object.keys(meta).length > 0;
    if (hasMeta) {
      var details = el("details", "log-meta");
      var summary = el("summary", null, "Metadata");
      summary.setAttribute("aria-label", "Metadata of event " + item.id + " (" + item.event + ")");
      details.appendChild(summary);
      details.appendChild(el("pre", null, JSON.stringify(meta, null, 2)));
      if (S.expanded.has(item.id)) { details.open = true; }
      details.addEventListener("toggle", function () {
        if (details.open) { S.expanded.add(item.id); } else { S.expanded.delete(item.id); }
      });
      li.appendChild(details);
    }
    li.dataset.search = (item.event + "\n" + item.message + "\n" + (hasMeta ? JSON.stringify(meta) : "") + "\n" +
                         item.level).toLowerCase();
    return li;
  }

  function mergeLogs(items) {
    var list = $("log-list");
    var fresh = items.filter(function (it) { return !S.logs.has(it.id); });
    fresh.sort(function (a, b) { return b.id - a.id; });
    fresh.forEach(function (it) {
      S.logs.set(it.id, it);
      var row = buildLogRow(it);
      S.logRows.set(it.id, row);
      // rows are kept newest (highest id) first: insert before the first row with a lower id
      var before = null;
      for (var node = list.firstElementChild; node; node = node.nextElementSibling) {
        if (Number(node.dataset.id) < it.id) { before = node; break; }
      }
      list.insertBefore(row, before);
      if (it.id > S.maxLogId) { S.maxLogId = it.id; }
      applySearchTo(row);
    });
    while (S.logs.size > MAX_LOGS) {
      var last = list.lastElementChild;
      if (!last) { break; }
      var id = Number(last.dataset.id);
      last.remove();
      S.logs.delete(id);
      S.logRows.delete(id);
      S.expanded.delete(id);
    }
    updateLogCount();
  }

  function searchTerms() {
    return $("log-search").value.toLowerCase().split(/\s+/).filter(function (t) { return t; });
  }

  function applySearchTo(row, terms) {
    terms = terms || searchTerms();
    var hay = row.dataset.search || "";
    var match = terms.every(function (t) { return hay.indexOf(t) !== -1; });
    if (row.hidden === match) { row.hidden = !match; }
  }

  function applySearch() {
    var terms = searchTerms();
    S.logRows.forEach(function (row) { applySearchTo(row, terms); });
    updateLogCount();
  }

  function updateLogCount() {
    var total = S.logs.size;
    var visible = 0;
    S.logRows.forEach(function (row) { if (!row.hidden) { visible += 1; } });
    var text;
    if (!total) {
      text = S.logLevel ? "No " + S.logLevel + " events." : "No health events yet.";
    } else if (visible === total) {
      text = total + " event" + (total === 1 ? "" : "s") + (S.logLevel ? " (" + S.logLevel + ")" : "") +
             ", newest first (at most " + MAX_LOGS + " kept).";
    } else {
      text = visible + " of " + total + " events match the search.";
    }
    setText("log-count", text);
  }

  function changeLevel() {
    S.logLevel = $("log-level").value;
    S.logGen += 1;
    S.logs.clear();
    S.logRows.clear();
    S.maxLogId = 0;
    $("log-list").textContent = "";
    setText("log-count", "Loading…");
    requestRefresh();
  }

  // ------------------------------------------------------------------ failed requests

  function failedCells(item) {
    return [
      fmtTime(item.updated_at),
      item.email + (item.full_name ? " (" + item.full_name + ")" : ""),
      (item.error_code ? item.error_code + ": " : "") + (item.error || "unknown error"),
      String(item.attempts),
      item.mode,
      item.request_id
    ];
  }

  function renderFailed(items) {
    var body = $("failed-rows");
    var keep = new Set();
    items.forEach(function (item, i) {
      var id = item.request_id;
      keep.add(id);
      S.failedItems.set(id, item);
      var tr = S.failedRows.get(id);
      if (!tr) {
        tr = el("tr");
        tr.dataset.id = id;
        for (var c = 0; c < 6; c += 1) { tr.appendChild(el("td", c === 2 ? "cell-error" : c === 5 ? "cell-id" : null)); }
        var action = el("td", "cell-action");
        var btn = el("button", "btn btn-small", "Retry");
        btn.type = "button";
        btn.dataset.id = id;
        btn.addEventListener("click", function () { openRetryDialog(id); });
        action.appendChild(btn);
        tr.appendChild(action);
        S.failedRows.set(id, tr);
      }
      tr.querySelector("button").setAttribute("aria-label", "Retry the request for " + item.email);
      failedCells(item).forEach(function (text, c) {
        if (tr.children[c].textContent !== text) { tr.children[c].textContent = text; }
      });
      if (body.children[i] !== tr) { body.insertBefore(tr, body.children[i] || null); }
    });
    S.failedRows.forEach(function (tr, id) {
      if (!keep.has(id)) { tr.remove(); S.failedRows.delete(id); S.failedItems.delete(id); }
    });
    setText("failed-count", items.length ? "(" + items.length + (items.length >= 50 ? "+" : "") + ")" : "");
    show("failed-wrap", items.length > 0);
    show("failed-empty", items.length === 0);
  }

  function openRetryDialog(id) {
    var item = S.failedItems.get(id);
    if (!item) { return; }
    if (S.retryTarget !== id) { $("retry-reason").value = ""; }
    S.retryTarget = id;
    updateCounter("retry-reason", "retry-reason-count");
    $("retry-error").textContent = "";
    var facts = $("retry-facts");
    facts.textContent = "";
    [["Email", item.email + (item.full_name ? " (" + item.full_name + ")" : "")],
     ["Error", (item.error_code ? item.error_code + ": " : "") + (item.error || "unknown error")],
     ["Attempts", String(item.attempts)],
     ["Request", id]].forEach(function (pair) {
      var row = el("div");
      row.appendChild(el("dt", null, pair[0]));
      row.appendChild(el("dd", null, pair[1]));
      facts.appendChild(row);
    });
    $("retry-confirm").disabled = false;
    openDialog($("retry-dialog"));
  }

  function submitRetry(ev) {
    ev.preventDefault();
    var id = S.retryTarget;
    if (!id) { return; }
    var field = $("retry-reason");
    var problem = validReason(field.value);
    if (problem) {
      $("retry-error").textContent = problem;
      field.setAttribute("aria-invalid", "true");
      field.focus();
      return;
    }
    field.removeAttribute("aria-invalid");
    $("retry-error").textContent = "";
    $("retry-confirm").disabled = true;
    var gen = S.generation;
    var item = S.failedItems.get(id);
    api("/api/admin/requests/" + encodeURIComponent(id) + "/retry", { method: "POST",
                                                                     json: { reason: field.value.trim() } })
      .then(function (res) {
        if (gen !== S.generation) { return; }
        field.value = "";
        S.retryTarget = null;
        closeDialog($("retry-dialog"));
        failedMessage(res.status === "failed" ? "bad" : "ok", "Retried the request for " +
          (item ? item.email : id) + ": now " + res.status + " (" + res.mode + ")" +
          (res.error ? ", error: " + res.error : "") + ".");
        requestRefresh();
      }, function (err) {
        if (gen !== S.generation) { return; }
        $("retry-confirm").disabled = false;
        if (isAuthError(err)) { signOut(authMessage(err)); return; }
        if (err.status === 409 || err.status === 404) {
          closeDialog($("retry-dialog"));
          failedMessage("bad", "Not retried: " + describeError(err) + ". The list was reloaded.");
          requestRefresh();
          return;
        }
        $("retry-error").textContent = "Not retried: " + describeError(err);
      });
  }

  function failedMessage(kind, text) {
    var node = $("failed-msg");
    node.className = "notice " + (kind === "ok" ? "notice-ok" : "notice-bad");
    node.textContent = text;
    show(node, true);
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    $("pause-btn").addEventListener("click", function () {
      S.paused = !S.paused;
      updatePauseButton();
      if (S.paused) { stopTimer(); } else { requestRefresh(); }
    });
    $("refresh-btn").addEventListener("click", function () { requestRefresh(); });
    $("switch-btn").addEventListener("click", openModeDialog);
    $("mode-form").addEventListener("submit", submitMode);
    $("mode-cancel").addEventListener("click", function () { closeDialog($("mode-dialog")); });
    $("mode-reason").addEventListener("input", function () {
      updateCounter("mode-reason", "mode-reason-count");
      if ($("mode-error").textContent && !validReason(this.value)) {
        $("mode-error").textContent = "";
        this.removeAttribute("aria-invalid");
      }
    });
    $("retry-form").addEventListener("submit", submitRetry);
    $("retry-cancel").addEventListener("click", function () { closeDialog($("retry-dialog")); });
    $("retry-reason").addEventListener("input", function () {
      updateCounter("retry-reason", "retry-reason-count");
      if ($("retry-error").textContent && !validReason(this.value)) {
        $("retry-error").textContent = "";
        this.removeAttribute("aria-invalid");
      }
    });
    ["mode-dialog", "retry-dialog"].forEach(function (id) {
      $(id).addEventListener("close", function () {
        if (S.authPending && !anyDialogOpen()) { signOut(authMessage(S.authPending)); }
      });
    });
    $("log-level").addEventListener("change", changeLevel);
    $("log-search").addEventListener("input", applySearch);
    document.addEventListener("visibilitychange", function () {
      if (!S.signedIn && !S.inFlight) { return; }
      if (document.hidden) { stopTimer(); } else if (!S.paused) { requestRefresh(); }
    });
    var resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () {
        var box = $("chart");
        if (S.metrics && box.clientWidth && Math.abs(box.clientWidth - S.chartWidth) > 4) {
          renderChart(S.metrics.history || []);
        }
      }, 150);
    });
    setInterval(function () {
      tick();
      if (S.signedIn && S.mode) { renderSwitch(); }
    }, 1000);

    session.start(signIn, signOut);
    // signin.js (email + password) hands the token it gets to the same sign-in path as a pasted one.
    window.provisionerPanel = { signIn: signIn };
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
