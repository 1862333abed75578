/* The staff session shared by the System Health panel and the sales desk: one bearer token per browser tab, the
 * one authenticated fetch, and the sign-in screen both pages show when the token is missing or refused.
 *
 * The token comes from a `#token=<jwt>` link (then removed from the address bar; it replaces a different session
 * of this tab only when the person confirms it), a pasted value or the email/password sign-in, and is kept in
 * sessionStorage (this tab only; never localStorage, never a cookie).
 * request() sends it as `Authorization: Bearer` to this server's API only (connect-src 'self'), with a timeout,
 * and turns every non-2xx answer into an ApiError carrying the API's `{"error": {code, message, details}}`.
 * Both pages share the sign-in ids (#signin, #signin-btn, #signin-status, #auth-msg, #token-input,
 * #session-controls); showSignIn() and showPage() switch between that screen and the page's own section.
 * Served under the pages' strict CSP: no inline code, every visual state the `hidden` attribute.
 */
(function () {
  "use strict";

  var KEY = "provisioner.adminToken";  // the panel's historical key: one sign-in for both pages
  var DEFAULT_TIMEOUT_MS = 10000;
  var current = null;
  var clockSkewMs = 0;

  function $(id) { return document.getElementById(id); }

  // ------------------------------------------------------------------ the token in this tab

  function store(token) {
    current = token;
    try { window.sessionStorage.setItem(KEY, token); } catch (e) { /* private mode: tab memory only */ }
  }

  function forget() {
    current = null;
    try { window.sessionStorage.removeItem(KEY); } catch (e) { /* nothing stored to forget */ }
  }

  function token() {
    if (current) { return current; }
    try { return window.sessionStorage.getItem(KEY); } catch (e) { return null; }
  }

  function fromFragment() {
    var hash = window.location.hash || "";
    var match = /(?:^#|&)token=([^&]+)/.exec(hash);
    if (!match) { return null; }
    var found = null;
    try { found = decodeURIComponent(match[1]); } catch (e) { found = match[1]; }
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    return found;
  }

  /* A pasted value as a bare token ("Bearer " and spaces dropped); "" when nothing usable. */
  function clean(value) { return (value || "").trim().replace(/^Bearer\s+/i, ""); }

  /* The role claim, read only to adapt the page early (the API decides anyway); null when unreadable. */
  function roleOf(jwt) {
    try {
      var part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      var claims = JSON.parse(window.atob(part + "===".slice((part.length + 3) % 4)));
      return (claims.app_metadata && claims.app_metadata.role) || null;
    } catch (e) {
      return null;
    }
  }

  // ------------------------------------------------------------------ the API

  function ApiError(status, code, message, details) {
    this.status = status;
    this.code = code;
    this.message = message;
    this.details = details;
  }

  /* One call to our API with the tab's token. options: method, json (an object sent as JSON), body (sent as is,
   * with its Content-Type in headers), headers, raw (a Blob on success), timeoutMs, anonymous (no token).
   * Resolves with the parsed JSON body (null when empty); rejects with an ApiError (status 0: no answer). */
  function request(path, options) {
    options = options || {};
    var timeoutMs = options.timeoutMs || DEFAULT_TIMEOUT_MS;
    var controller = new AbortController();
    var timer = setTimeout(function () { controller.abort(); }, timeoutMs);
    var headers = { "Accept": "application/json" };
    if (!options.anonymous) { headers.Authorization = "Bearer " + token(); }
    var body = options.body;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    }
    Object.assign(headers, options.headers || {});
    var init = { method: options.method || "GET", headers: headers, cache: "no-store", credentials: "omit",
                 signal: controller.signal, body: body };
    return fetch(path, init).then(function (res) {
      clearTimeout(timer);
      var date = res.headers.get("Date");
      var server = date ? new Date(date).getTime() : NaN;
      if (!isNaN(server)) { clockSkewMs = Math.abs(server - Date.now()) > 2000 ? server - Date.now() : 0; }
      if (res.ok && options.raw) { return res.blob(); }
      return res.text().then(function (text) {
        var parsed = null;
        try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = null; }
        if (!res.ok) {
          var err = (parsed && parsed.error) || {};
          var failure = new ApiError(res.status, err.code || "http_" + res.status,
                                     err.message || res.statusText || "HTTP " + res.status, err.details);
          failure.retryAfter = res.headers.get("Retry-After");
          throw failure;
        }
        return parsed;
      });
    }, function (e) {
      clearTimeout(timer);
      throw new ApiError(0, "network", e && e.name === "AbortError"
        ? "the server did not answer within " + (timeoutMs / 1000) + " s"
        : "the server could not be reached");
    });
  }

  /* An error in words for a message line: the API's message, the first field it names, the status and code. */
  function describe(err) {
    if (!(err instanceof ApiError)) { return String(err && err.message || err); }
    if (err.status === 0) { return err.message; }
    var first = Array.isArray(err.details) && err.details[0] && err.details[0].field ? err.details[0] : null;
    return err.message + (first ? " (" + first.field + ": " + first.message + ")" : "") +
      " (" + err.status + (err.code ? " " + err.code : "") + ")";
  }

  function isAuthError(err) { return err instanceof ApiError && (err.status === 401 || err.status === 403); }

  // ------------------------------------------------------------------ sign-in screen and sign-out

  function showAuthMessage(text) {
    $("auth-msg").textContent = text;
    $("auth-msg").hidden = false;
  }

  /* Sign out: the token forgotten, the page's own section hidden, the sign-in screen shown with `message`. */
  function showSignIn(pageId, message) {
    forget();
    $(pageId).hidden = true;
    $("session-controls").hidden = true;
    $("signin").hidden = false;
    $("signin-btn").disabled = false;
    $("signin-status").textContent = "";
    if (message) { showAuthMessage(message); } else { $("auth-msg").hidden = true; }
    $("token-input").value = "";
    $("token-input").focus();
  }

  /* The token worked: the sign-in screen hidden, the page's own section shown. */
  function showPage(pageId) {
    $("signin").hidden = true;
    $("auth-msg").hidden = true;
    $("signin-btn").disabled = false;
    $("signin-status").textContent = "";
    $("token-input").value = "";
    $(pageId).hidden = false;
    $("session-controls").hidden = false;
  }

  /* A pasted or linked token kept for this tab, or false (with the message shown) when there is none. */
  function accept(value, emptyMessage) {
    var cleaned = clean(value);
    if (!cleaned) {
      showAuthMessage(emptyMessage);
      $("token-input").focus();
      return false;
    }
    store(cleaned);
    $("signin-status").textContent = "Checking the token…";
    $("signin-btn").disabled = true;
    return true;
  }

  /* Sign out: the server ends this token on every instance (POST /api/auth/sign-out), then the page forgets it.
   * An answer of 401 means it had ended already; no answer at all is said, since the token then lives on until
   * it expires. */
  function endSession(signOut) {
    if (!token()) { signOut(null); return Promise.resolve(); }
    return request("/api/auth/sign-out", { method: "POST", timeoutMs: 5000 }).then(function () {
      signOut(null);
    }, function (err) {
      signOut(err instanceof ApiError && err.status === 401 ? null :
        "Signed out of this tab, but the server could not end the token (" + describe(err) + "): it stays " +
        "valid until it expires.");
    });
  }

  // ------------------------------------------------------------------ a link's token (login CSRF)

  function roleWords(jwt) { return roleOf(jwt) ? "role " + roleOf(jwt).replace("_", " ") : "unknown role"; }

  /* A `#token=` link never silently replaces the session this tab already has: anyone can send a link that signs
   * the tab in as them (login CSRF; everything done afterwards would be done as them). The page asks, in the page
   * (a modal <dialog>, built here so both pages share it), and keeping this tab's session is the default
   * (Escape, the first button). decide(token) is then called with the token to use. */
  function askToReplace(existing, linked, decide) {
    var old = $("replace-session");
    if (old) { old.remove(); }
    var dialog = document.createElement("dialog");
    dialog.id = "replace-session";
    dialog.className = "dialog";
    dialog.setAttribute("aria-labelledby", "replace-session-h");
    dialog.setAttribute("aria-describedby", "replace-session-desc");
    var heading = document.createElement("h2");
    heading.id = "replace-session-h";
    heading.textContent = "Replace this tab's session?";
    var text = document.createElement("p");
    text.id = "replace-session-desc";
    text.textContent = "The link you opened would sign this tab in with another session (" + roleWords(linked) +
      ") instead of yours (" + roleWords(existing) + "). Anyone can send such a link, and what you do next " +
      "would be done as them. Replace your session only if you asked for this link.";
    var actions = document.createElement("div");
    actions.className = "dialog-actions";
    var keep = document.createElement("button");
    keep.type = "button";
    keep.className = "btn btn-primary";
    keep.textContent = "Keep my session";
    var replace = document.createElement("button");
    replace.type = "button";
    replace.className = "btn";
    replace.textContent = "Use the link's session";
    actions.append(keep, replace);
    dialog.append(heading, text, actions);
    var chosen = existing;
    dialog.addEventListener("close", function () { dialog.remove(); decide(chosen); });
    keep.addEventListener("click", function () { chosen = existing; dialog.close(); });
    replace.addEventListener("click", function () { chosen = linked; dialog.close(); });
    document.body.appendChild(dialog);
    dialog.showModal();
    keep.focus();
  }

  /* A `#token=` link's token (removed from the address bar): used at once when this tab has no session or the
   * same one, else only once the person says so. */
  function followLink(signIn) {
    var linked = fromFragment();
    var existing = token();
    if (linked && existing && clean(linked) !== existing) {
      askToReplace(existing, linked, signIn);
      return true;
    }
    if (linked || existing) { signIn(linked || existing); return true; }
    return false;
  }

  /* Wires the pasted-token form and Sign out, then signs in with a `#token=` link or this tab's token (a link
   * opened in the page later, too). */
  function start(signIn, signOut) {
    $("signin-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      signIn($("token-input").value);
    });
    $("signout-btn").addEventListener("click", function () {
      $("signout-btn").disabled = true;
      endSession(signOut).finally(function () { $("signout-btn").disabled = false; });
    });
    if (!followLink(signIn)) { $("token-input").focus(); }
    window.addEventListener("hashchange", function () {
      if (/(?:^#|&)token=/.test(window.location.hash || "")) { followLink(signIn); }
    });
  }

  window.ProvisionerSession = {
    token: token,
    store: store,
    forget: forget,
    roleOf: roleOf,
    ApiError: ApiError,
    request: request,
    describe: describe,
    isAuthError: isAuthError,
    clockSkewMs: function () { return clockSkewMs; },
    showAuthMessage: showAuthMessage,
    showSignIn: showSignIn,
    showPage: showPage,
    accept: accept,
    endSession: endSession,
    start: start
  };
}());
