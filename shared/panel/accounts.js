/* The panel's Accounts card: staff accounts (GET /api/admin/accounts), a new staff account
 * (POST /api/admin/accounts) and "Send welcome again" (POST /api/admin/accounts/{id}/welcome: a new link, the old
 * ones dead). Loads when the panel is shown (app.js un-hides #panel once the token works) and after each change.
 * Calls the API through session.js with the tab's token. Strict CSP: no inline code, no style attributes. */
(function () {
  "use strict";

  var session = window.ProvisionerSession;

  function $(id) { return document.getElementById(id); }

  function say(kind, text) {
    var node = $("accounts-msg");
    node.className = "notice" + (kind ? " notice-" + kind : "");
    node.textContent = text;
    node.hidden = !text;
  }

  function api(method, path, body) { return session.request(path, { method: method, json: body }); }

  function when(iso) {
    if (!iso) { return "—"; }
    var d = new Date(iso);
    return isNaN(d.getTime()) ? iso : d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function render(items) {
    var body = $("accounts-rows");
    body.textContent = "";
    items.forEach(function (a) {
      var tr = document.createElement("tr");
      tr.dataset.id = a.id;
      cell(tr, a.email);
      cell(tr, a.full_name);
      cell(tr, a.role);
      cell(tr, a.password_set_at ? when(a.password_set_at) : "not yet");
      cell(tr, when(a.last_sign_in_at));
      var button = document.createElement("button");
      button.type = "button";
      button.className = "btn btn-small";
      button.textContent = "Send welcome again";
      button.setAttribute("aria-label", "Send the welcome email again to " + a.email);
      button.addEventListener("click", function () { resend(a, button); });
      cell(tr, "").appendChild(button);
      body.appendChild(tr);
    });
    $("accounts-wrap").hidden = items.length === 0;
    $("accounts-empty").hidden = items.length !== 0;
  }

  function load() {
    if (!session.token()) { return Promise.resolve(); }
    return api("GET", "/api/admin/accounts").then(function (data) { render(data.items || []); }, function (err) {
      say("bad", "Could not load the accounts: " + session.describe(err));
    });
  }

  function resend(account, button) {
    if (!window.confirm("Send the welcome email to " + account.email + " again? Every older link stops working.")) {
      return;
    }
    button.disabled = true;
    api("POST", "/api/admin/accounts/" + encodeURIComponent(account.id) + "/welcome").then(function (data) {
      say("ok", "Welcome email " + (data.email === "sent" ? "sent" : "queued") + " to " + account.email + "; " +
          data.links_revoked + " older link(s) revoked.");
    }, function (err) {
      say("bad", "Could not send the welcome email: " + session.describe(err));
    }).finally(function () { button.disabled = false; });
  }

  function create(ev) {
    ev.preventDefault();
    var email = $("account-email").value.trim();
    var name = $("account-name").value.trim();
    if (!email || !name) {
      say("bad", "Enter the email address and the full name of the new account.");
      (email ? $("account-name") : $("account-email")).focus();
      return;
    }
    $("account-create").disabled = true;
    var role = $("account-role").value;
    api("POST", "/api/admin/accounts", { email: email, full_name: name, role: role }).then(function (data) {
      say("ok", "Account " + data.account.email + " (" + data.account.role + ") created; welcome email " +
          (data.email === "sent" ? "sent" : "queued") + ".");
      $("account-email").value = "";
      $("account-name").value = "";
      return load();
    }, function (err) {
      say("bad", "Could not create the account: " + session.describe(err));
    }).finally(function () { $("account-create").disabled = false; });
  }

  function init() {
    $("account-form").addEventListener("submit", create);
    var panel = $("panel");
    new MutationObserver(function () {
      if (!panel.hidden) { load(); } else { say("", ""); render([]); }
    }).observe(panel, { attributes: true, attributeFilter: ["hidden"] });
    if (!panel.hidden) { load(); }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
