/* The staff session shared by the System Health panel and the sales desk: one bearer token per browser tab.
 *
 * The token comes from a `#token=<jwt>` link (then removed from the address bar) or is pasted, and is kept in
 * sessionStorage (this tab only; never localStorage, never a cookie). Pages read it with
 * ProvisionerSession.initial() and send it as `Authorization: Bearer` to this server's API only.
 */
(function () {
  "use strict";

  var KEY = "provisioner.adminToken";  // the panel's historical key: one sign-in for both pages

  function store(token) {
    try { window.sessionStorage.setItem(KEY, token); } catch (e) { /* private mode: tab memory only */ }
  }

  function forget() {
    try { window.sessionStorage.removeItem(KEY); } catch (e) { /* ignore */ }
  }

  function fromFragment() {
    var hash = window.location.hash || "";
    var match = /(?:^#|&)token=([^&]+)/.exec(hash);
    if (!match) { return null; }
    var token = null;
    try { token = decodeURIComponent(match[1]); } catch (e) { token = match[1]; }
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    return token;
  }

  function stored() {
    try { return window.sessionStorage.getItem(KEY); } catch (e) { return null; }
  }

  /* A pasted value as a bare token ("Bearer " and spaces dropped); "" when nothing usable. */
  function clean(token) { return (token || "").trim().replace(/^Bearer\s+/i, ""); }

  window.ProvisionerSession = {
    store: store,
    forget: forget,
    fromFragment: fromFragment,
    clean: clean,
    initial: function () { return fromFragment() || stored(); }
  };
}());
