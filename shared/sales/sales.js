/* The sales desk: create one user, upload a CSV (previewed here with csv.js, confirmed by the server), follow
 * each upload with a progress bar, see the caller's own recent requests. Plain JS, no framework, no build step,
 * served under the panel's strict CSP (no inline script or style: states are classes or `hidden`).
 *
 * Sign-in is the panel's (session.js): a pasted token or a `#token=` link, kept for this tab only.
 * Query parameter (tests, demos): ?refresh=N seconds between refreshes of the lists (1-300, default 5).
 */
(function () {
  "use strict";

  var FIELDS = ["email", "full_name", "phone", "product"];
  var UPLOAD_TIMEOUT_MS = 30000;  // a whole CSV goes up in one request
  var S = { token: null, timer: null, batches: {}, recent: {}, file: null, preview: null, sending: false,
            uploadKey: null, createKey: null };

  function $(id) { return document.getElementById(id); }
  function show(node, visible) { (typeof node === "string" ? $(node) : node).hidden = !visible; }
  function setText(id, text) { $(id).textContent = text; }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function refreshSeconds() {
    var match = /[?&]refresh=([0-9.]+)/.exec(window.location.search);
    var value = match ? parseFloat(match[1]) : 5;
    return value >= 1 && value <= 300 ? value : 5;
  }

  function randomKey(prefix) {
    var bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    return prefix + Array.from(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  // ------------------------------------------------------------------ API and session (session.js)

  var session = window.ProvisionerSession;

  function request(path, options) {
    return session.request(path, Object.assign({ timeoutMs: UPLOAD_TIMEOUT_MS }, options || {}));
  }

  function authProblem(err) {
    if (err.status === 401) {
      signOut("The token was refused (401): it is missing, expired or invalid. Paste a fresh token.");
      return true;
    }
    if (err.status === 403) {
      signOut("This token's role may not create users (403). Sign in as a sales manager or an admin.");
      return true;
    }
    return false;
  }

  function signIn(token) {
    if (!session.accept(token, "Paste a token first.")) { return; }
    S.token = session.token();
    request("/api/users/requests?limit=1").then(function () {
      enterDesk();
    }, function (err) {
      $("signin-btn").disabled = false;
      setText("signin-status", "");
      if (!authProblem(err)) { session.showAuthMessage("Could not check the token: " + err.message); }
    });
  }

  function signOut(message) {
    S.token = null;
    clearInterval(S.timer);
    S.timer = null;
    S.batches = {};
    S.recent = {};
    $("batch-list").textContent = "";
    $("recent-rows").textContent = "";
    session.showSignIn("desk", message);
  }

  function enterDesk() {
    session.showPage("desk");
    refreshLists();
    S.timer = setInterval(refreshLists, refreshSeconds() * 1000);
    $("f-email").focus();
  }

  // ------------------------------------------------------------------ create one user

  function clearFieldErrors() {
    FIELDS.forEach(function (name) {
      show("e-" + name, false);
      $("f-" + name).removeAttribute("aria-invalid");
    });
  }

  function fieldError(name, message) {
    var node = $("e-" + name);
    if (!node) { return false; }
    node.textContent = message;
    show(node, true);
    $("f-" + name).setAttribute("aria-invalid", "true");
    return true;
  }

  function result(id, kind, text) {
    var node = $(id);
    node.className = "notice notice-" + kind;
    node.textContent = text;
    show(node, true);
  }

  function createUser(event) {
    event.preventDefault();
    clearFieldErrors();
    show("create-result", false);
    var body = {};
    FIELDS.forEach(function (name) {
      var value = $("f-" + name).value.trim();
      if (value || name === "email" || name === "full_name") { body[name] = value; }
    });
    var key = S.createKey || (S.createKey = randomKey("desk-"));  // a retried click is the same request
    $("create-btn").disabled = true;
    request("/api/users", { method: "POST", json: body, headers: { "Idempotency-Key": key } })
      .then(function (answer) {
        S.createKey = null;
        $("create-form").reset();
        result("create-result", "ok", answer.status === "created"
          ? "Created " + answer.user.email + " (welcome email on its way)."
          : "Request recorded for " + body.email + ": it is queued and will be created shortly.");
        refreshLists();
      }, function (err) {
        if (authProblem(err)) { return; }
        if (err.code === "idempotency_key_reused") { S.createKey = null; }
        var placed = false;
        if (err.status === 422 && Array.isArray(err.details)) {
          err.details.forEach(function (d) { placed = fieldError(String(d.field || ""), d.message) || placed; });
          S.createKey = null;
        } else if (err.status === 409) {
          placed = fieldError("email", err.code === "user_exists" ? "A user with this address already exists."
                                                                  : "A request for this address is in progress.");
          S.createKey = null;
        }
        if (placed) {
          var first = document.querySelector("[aria-invalid='true']");
          if (first) { first.focus(); }
        } else {
          result("create-result", "bad", "Not created: " + err.message);
        }
      })
      .then(function () { $("create-btn").disabled = false; });
  }

  // ------------------------------------------------------------------ upload

  function resetUpload() {
    S.file = null;
    S.preview = null;
    S.uploadKey = null;
    $("file-input").value = "";
    show("preview", false);
    $("send-btn").disabled = true;
  }

  function previewFile() {
    var file = $("file-input").files[0];
    show("upload-result", false);
    if (!file) { resetUpload(); return; }
    file.arrayBuffer().then(function (buffer) {
      S.file = buffer;
      S.uploadKey = randomKey("desk-upload-");  // one key per chosen file: a double send is one batch
      S.preview = window.SalesCsv.check(buffer);
      renderPreview(file.name, S.preview);
    });
  }

  function renderPreview(name, preview) {
    show("preview", true);
    var tbody = $("preview-rows");
    tbody.textContent = "";
    show("file-error", !!preview.error);
    if (preview.error) {
      setText("preview-summary", name + ": this file cannot be sent.");
      setText("file-error", preview.error);
      show("preview-table-wrap", false);
      $("send-btn").disabled = true;
      $("send-btn").textContent = "Send";
      return;
    }
    var rejectedRows = {};
    preview.rejected.forEach(function (r) { rejectedRows[r.row] = true; });
    var bad = Object.keys(rejectedRows).length;
    setText("preview-summary", name + ": " + preview.rows.length + " row(s): " + preview.ready + " ready, " +
            bad + " with errors, " + preview.duplicates.length + " repeated in the file. " +
            "Rows with errors and repeats are not created; the server checks every row again.");
    var problems = preview.rejected.map(function (r) { return [r.row, r.field, r.message]; })
      .concat(preview.duplicates.map(function (d) { return [d.row, "email", "same address as row " + d.first_row]; }))
      .sort(function (a, b) { return a[0] - b[0]; });
    problems.slice(0, 200).forEach(function (p) {
      var tr = el("tr");
      tr.appendChild(el("td", "cell-id", p[0]));
      tr.appendChild(el("td", null, p[1]));
      tr.appendChild(el("td", null, p[2]));
      tbody.appendChild(tr);
    });
    show("preview-table-wrap", problems.length > 0);
    $("send-btn").disabled = preview.ready === 0;
    $("send-btn").textContent = "Send " + preview.ready + " row(s)";
  }

  function sendFile() {
    if (!S.file || !S.preview || S.preview.error || S.sending) { return; }
    S.sending = true;
    $("send-btn").disabled = true;
    request("/api/users/bulk", { method: "POST", body: S.file,
                                 headers: { "Content-Type": "text/csv", "Idempotency-Key": S.uploadKey } })
      .then(function (answer) {
        var notes = [answer.accepted + " row(s) accepted"];
        if (answer.rejected.length) {
          var rows = {};
          answer.rejected.forEach(function (r) { rows[r.row] = true; });
          notes.push(Object.keys(rows).length + " rejected by the server");
        }
        if (answer.duplicates.length) { notes.push(answer.duplicates.length + " duplicate(s) not created"); }
        notes.push(answer.path === "drain" ? "the queue is off: they are created by the drain at the rate limit"
                                           : "queued");
        result("upload-result", "ok", "Upload " + answer.batch_id + ": " + notes.join("; ") + ".");
        resetUpload();
        refreshLists();
      }, function (err) {
        if (authProblem(err)) { return; }
        $("send-btn").disabled = false;
        result("upload-result", "bad", "Not sent: " + err.message);
      })
      .then(function () { S.sending = false; });
  }

  // ------------------------------------------------------------------ lists

  function refreshLists() {
    if (!S.token) { return; }
    Promise.all([request("/api/users/bulk?limit=10"), request("/api/users/requests?limit=50")])
      .then(function (answers) {
        renderBatches(answers[0].items);
        renderRecent(answers[1].items);
        setText("updated", "Updated " + new Date().toLocaleTimeString());
      }, function (err) {
        if (!authProblem(err)) { setText("updated", "Not updated: " + err.message); }
      });
  }

  function renderBatches(items) {
    var list = $("batch-list");
    show("batches-empty", items.length === 0);
    var keep = {};
    items.forEach(function (b) {
      keep[b.batch_id] = true;
      var node = S.batches[b.batch_id];
      if (!node) {
        node = el("li", "batch");
        node.dataset.batch = b.batch_id;
        node.appendChild(el("div", "batch-head"));
        var bar = el("progress", "batch-bar");
        bar.setAttribute("aria-label", "progress of upload " + b.batch_id);
        node.appendChild(bar);
        node.appendChild(el("p", "batch-counts"));
        var actions = el("div", "batch-actions");
        var link = el("button", "btn btn-small", "Download results.csv");
        link.type = "button";
        link.addEventListener("click", function () { downloadResults(b.batch_id); });
        actions.appendChild(link);
        node.appendChild(actions);
        S.batches[b.batch_id] = node;
      }
      list.appendChild(node);  // keeps the server's order (newest first)
      var finished = b.created + b.failed;
      node.querySelector(".batch-head").textContent = b.batch_id + " · " + new Date(b.created_at).toLocaleString() +
        " · " + (b.path === "drain" ? "drain (queue off)" : "queue") + (b.done ? " · done" : "");
      var bar = node.querySelector(".batch-bar");
      bar.max = Math.max(1, b.total);
      bar.value = b.total ? finished : 1;
      node.querySelector(".batch-counts").textContent = finished + " of " + b.total + " done: " + b.created +
        " created, " + b.failed + " failed, " + b.pending + " pending" +
        (b.rejected ? "; " + b.rejected + " row(s) rejected" : "") +
        (b.duplicates ? "; " + b.duplicates + " duplicate(s)" : "");
      node.classList.toggle("batch-done", b.done);
    });
    Object.keys(S.batches).forEach(function (id) {
      if (!keep[id]) { S.batches[id].remove(); delete S.batches[id]; }
    });
  }

  function downloadResults(batchId) {
    request("/api/users/bulk/" + encodeURIComponent(batchId) + "/results.csv", { raw: true, headers: {
      "Accept": "text/csv" } }).then(function (blob) {
      var url = URL.createObjectURL(blob);
      var a = el("a");
      a.href = url;
      a.download = batchId + "-results.csv";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
    }, function (err) {
      if (!authProblem(err)) { result("upload-result", "bad", "Could not download the results: " + err.message); }
    });
  }

  /* Rows are keyed by request id and updated in place: a refresh never takes the focus from a button. */
  function renderRecent(items) {
    var tbody = $("recent-rows");
    show("recent-empty", items.length === 0);
    show("recent-table", items.length > 0);
    var keep = {};
    items.forEach(function (r) {
      keep[r.request_id] = true;
      var tr = S.recent[r.request_id];
      if (!tr) {
        tr = el("tr");
        tr.dataset.request = r.request_id;
        tr.appendChild(el("td", "cell-email", r.email));
        tr.appendChild(el("td", null, r.full_name));
        tr.appendChild(el("td"));
        var origin = el("td", "cell-id");
        if (r.batch_id) {
          origin.appendChild(el("span", null, r.batch_id.slice(0, 12) + "… row " + r.row + " "));
          var csvLink = el("button", "btn btn-small", "results.csv");
          csvLink.type = "button";
          csvLink.setAttribute("aria-label", "results.csv of upload " + r.batch_id);
          csvLink.addEventListener("click", function () { downloadResults(r.batch_id); });
          origin.appendChild(csvLink);
        } else {
          origin.textContent = "single";
        }
        tr.appendChild(origin);
        tr.appendChild(el("td", null, new Date(r.created_at).toLocaleString()));
        S.recent[r.request_id] = tr;
      }
      var status = tr.children[2];
      var shown = r.status + "|" + (r.error || "");
      if (status.dataset.shown !== shown) {
        status.dataset.shown = shown;
        status.textContent = "";
        status.appendChild(el("span", "badge badge-" + r.status, r.status));
        if (r.error) { status.appendChild(el("span", "cell-error", " " + r.error)); }
      }
      tbody.appendChild(tr);  // keeps the server's order (newest first)
    });
    Object.keys(S.recent).forEach(function (id) {
      if (!keep[id]) { S.recent[id].remove(); delete S.recent[id]; }
    });
  }

  // ------------------------------------------------------------------ start

  function init() {
    $("create-form").addEventListener("submit", createUser);
    FIELDS.forEach(function (name) {
      $("f-" + name).addEventListener("input", function () { S.createKey = null; });
    });
    $("file-input").addEventListener("change", previewFile);
    $("send-btn").addEventListener("click", sendFile);
    $("clear-btn").addEventListener("click", function () { resetUpload(); $("file-input").focus(); });
    session.start(signIn, signOut);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
