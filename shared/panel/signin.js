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

  // The role claim, read only to say early that an account may not use the panel (the API decides anyway).
  function roleOf(token) {
    try {
      var part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      var claims = JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
      return (claims.app_metadata && claims.app_metadata.role) || "";
    } catch (e) {
      return "";
    }
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
    fetch("/api/auth/sign-in", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify({ email: email, password: password }),
      credentials: "omit",
      cache: "no-store"
    }).then(function (res) {
      return res.json().catch(function () { return {}; }).then(function (body) {
        $("signin-status").textContent = "";
        if (res.status === 200 && body.access_token) {
          $("signin-password").value = "";
          var role = roleOf(body.access_token);
          if (PANEL_ROLES.indexOf(role) < 0) {
            fieldError("Signed in, but this account (role " + (role || "unknown") + ") may not use the " +
                       "System Health panel.");
            return;
          }
          window.provisionerPanel.signIn(body.access_token);
          return;
        }
        var err = (body && body.error) || {};
        if (res.status === 401) {
          fieldError("The email address or the password is wrong.");
          $("signin-password").focus();
        } else if (res.status === 429) {
          var wait = res.headers.get("Retry-After");
          fieldError("Too many attempts. Try again in " + (wait ? Math.ceil(Number(wait) / 60) + " min" : "a while") +
                     ".");
        } else {
          fieldError((err.message || "Sign-in failed") + " (HTTP " + res.status + ").");
        }
      });
    }, function () {
      $("signin-status").textContent = "";
      fieldError("The server could not be reached. Check the connection and try again.");
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
