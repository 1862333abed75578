/* The set-password page: reads the one-time token from the link's fragment (#token=, which a browser never sends
 * to a server, so no request log holds it; the older ?token= form of emails already sent still works), removes
 * it from the address bar, and posts it with the chosen password to POST /api/account/password. Served under the
 * panel's strict CSP (no inline code).
 * The page learns nothing about the token until the holder submits: 404 unknown, 410 used or expired. */
(function () {
  "use strict";

  var token = null;

  function $(id) { return document.getElementById(id); }

  function message(kind, text) {
    var node = $("setpw-msg");
    node.className = "notice notice-" + kind;
    node.textContent = text;
    node.hidden = false;
  }

  function fieldError(text) {
    $("setpw-error").textContent = text || "";
    if (text) { $("setpw-password").setAttribute("aria-invalid", "true"); }
    else { $("setpw-password").removeAttribute("aria-invalid"); }
  }

  function finish(kind, text) {
    message(kind, text);
    $("setpw-form").hidden = true;
  }

  function submit(ev) {
    ev.preventDefault();
    var password = $("setpw-password").value;
    if (password.length < 12) { fieldError("Use at least 12 characters."); $("setpw-password").focus(); return; }
    if (password.length > 128) { fieldError("Use at most 128 characters."); $("setpw-password").focus(); return; }
    if (password !== $("setpw-confirm").value) {
      fieldError("The two passwords differ.");
      $("setpw-confirm").focus();
      return;
    }
    fieldError("");
    $("setpw-btn").disabled = true;
    window.ProvisionerSession.request("/api/account/password", {
      method: "POST", json: { token: token, password: password }, anonymous: true
    }).then(function () {
      finish("ok", "Your password is set. You can sign in now.");
      $("setpw-done").hidden = false;
    }, function (err) {
      if (err.status === 404) {
        finish("bad", "This link is not valid. Check that you opened the whole link from the email.");
      } else if (err.status === 410) {
        finish("bad", "This link was used already or has expired. Ask for a new welcome email.");
      } else if (err.status === 422) {
        var detail = (err.details && err.details[0] && err.details[0].message) || err.message || "";
        fieldError("Choose another password: " + detail);
        $("setpw-password").focus();
      } else if (err.status === 0) {
        message("bad", "The server could not be reached. Check the connection and try again.");
      } else {
        message("bad", "The server could not set the password: " + window.ProvisionerSession.describe(err) +
                ". Try again in a moment.");
      }
    }).finally(function () { $("setpw-btn").disabled = false; });
  }

  function init() {
    var fragment = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    token = fragment.get("token") || new URLSearchParams(window.location.search).get("token");
    // The link's token must not stay in the address bar, the history or a screenshot.
    window.history.replaceState(null, "", window.location.pathname);
    if (!token) {
      finish("bad", "This page needs the link from your welcome email (it ends with #token=…).");
      return;
    }
    $("setpw-form").addEventListener("submit", submit);
    $("setpw-password").addEventListener("input", function () { fieldError(""); });
    $("setpw-password").focus();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
