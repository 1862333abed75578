/* Panel sign-in with email and password (POST /api/auth/sign-in). The token it gets goes through app.js's own
 * sign-in path (window.provisionerPanel.signIn), exactly like a pasted token or a #token= link: kept in this tab
 * only (sessionStorage) and forgotten by Sign out. Served under the panel's strict CSP (no inline code). */
(function () {
  "use strict";

  var PANEL_ROLES = ["admin", "viewer"];

  function $(id) { return document.getElementById(id); }

  function fieldError(text) {
    $("password-error").textContent = text || "";
    if (text) { $("signin-password").setAttribute("aria-invalid", "true"); }
    else { $("signin-password").removeAttribute("aria-invalid"); }
  }

  function submit(ev) {
    ev.preventDefault();
    var email = $("signin-email").value.trim();
    var password = $("signin-password").value;
    if (!email || !password) {
      fieldError("Enter your email address and your password.");
      (email ? $("signin-password") : $("signin-email")).focus();
      return;
    }
    fieldError("");
    $("password-btn").disabled = true;
    $("signin-status").textContent = "Signing in…";
    var session = window.ProvisionerSession;
    session.request("/api/auth/sign-in", { method: "POST", json: { email: email, password: password },
                                           anonymous: true }).then(function (body) {
      $("signin-status").textContent = "";
      $("signin-password").value = "";
      var role = session.roleOf(body.access_token) || "";
      if (PANEL_ROLES.indexOf(role) < 0) {
        fieldError("Signed in, but this account (role " + (role || "unknown") + ") may not use the " +
                   "System Health panel.");
        return;
      }
      window.provisionerPanel.signIn(body.access_token);
    }, function (err) {
      $("signin-status").textContent = "";
      if (err.status === 401) {
        fieldError("The email address or the password is wrong.");
        $("signin-password").focus();
      } else if (err.status === 429) {
        fieldError("Too many attempts. Try again in " +
                   (err.retryAfter ? Math.ceil(Number(err.retryAfter) / 60) + " min" : "a while") + ".");
      } else if (err.status === 0) {
        fieldError("The server could not be reached. Check the connection and try again.");
      } else {
        fieldError("Sign-in failed: " + session.describe(err) + ".");
      }
    }).finally(function () { $("password-btn").disabled = false; });
  }

  function init() {
    $("password-form").addEventListener("submit", submit);
    $("signin-password").addEventListener("input", function () { fieldError(""); });
    if (!$("signin").hidden && !$("signin-status").textContent) { $("signin-email").focus(); }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
