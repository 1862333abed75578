/* The panel's Accounts card: staff accounts (GET /api/admin/accounts), a new staff account
 * (POST /api/admin/accounts), "Send welcome again" (POST /api/admin/accounts/{id}/welcome: a new link, the old
 * ones dead), and an account's life, each with a reason asked in #account-dialog (docs/sign-in-and-sessions.md):
 * Disable / Enable (POST .../disable, .../enable), Change role (PATCH /api/admin/accounts/{id}) and End sessions
 * (POST .../sessions/revoke). Loads when the panel is shown (app.js un-hides #panel once the token works) and
 * after each change. Calls the API through session.js with the tab's token. Strict CSP: no inline code, no style
 * attributes. */
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
      cell(tr, a.disabled ? "disabled" : "active");
      cell(tr, a.password_set_at ? when(a.password_set_at) : "not yet");
      cell(tr, when(a.last_sign_in_at));
      var actions = cell(tr, "");
      actions.className = "row-actions";
      var welcome = action(actions, "Send welcome again", "Send the welcome email again to " + a.email);
      welcome.addEventListener("click", function () { resend(a, welcome); });
      action(actions, a.disabled ? "Enable" : "Disable", (a.disabled ? "Enable " : "Disable ") + a.email)
        .addEventListener("click", function () { ask(a, a.disabled ? "enable" : "disable"); });
      action(actions, "Change role", "Change the role of " + a.email)
        .addEventListener("click", function () { ask(a, "role"); });
      action(actions, "End sessions", "End every session of " + a.email)
        .addEventListener("click", function () { ask(a, "revoke"); });
      body.appendChild(tr);
    });
    $("accounts-wrap").hidden = items.length === 0;
    $("accounts-empty").hidden = items.length !== 0;
  }

  function action(parent, text, label) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "btn btn-small";
    button.textContent = text;
    button.setAttribute("aria-label", label);
    parent.appendChild(button);
    return button;
  }

  // ------------------------------------------------------------------ an account's life, with a reason

  var CHANGES = {
    disable: { title: "Disable this account?", confirm: "Disable",
               text: " can no longer sign in or set a password, and every session of it ends on every instance.",
               path: "/disable", method: "POST",
               done: function (a) { return a.email + " is disabled; its sessions have ended."; } },
    enable: { title: "Enable this account again?", confirm: "Enable",
              text: " may sign in again; sessions from before the disable stay ended.",
              path: "/enable", method: "POST",
              done: function (a) { return a.email + " is enabled again."; } },
    role: { title: "Change this account's role?", confirm: "Change role",
            text: "'s sessions end at once (a token carries its role); the next sign-in carries the new role.",
            path: "", method: "PATCH",
            done: function (a) { return a.email + " is now " + a.role + "; its older sessions have ended."; } },
    revoke: { title: "End every session of this account?", confirm: "End sessions",
              text: " is signed out everywhere: every token issued so far is refused; signing in again works.",
              path: "/sessions/revoke", method: "POST",
              done: function (a, data) { return "Every session of " + a.email + " issued before " +
                                         when(data.revoked_before) + " has ended."; } }
  };
  var pending = null;  // {account, kind} while the dialog is open

  function ask(account, kind) {
    var change = CHANGES[kind];
    pending = { account: account, kind: kind };
    $("account-dialog-h").textContent = change.title;
    $("account-dialog-desc").textContent = account.email + " (" + account.role + ")" + change.text;
    $("account-new-role-field").hidden = kind !== "role";
    if (kind === "role") {
      var select = $("account-new-role");
      Array.prototype.forEach.call(select.options, function (o) { o.disabled = o.value === account.role; });
      select.value = account.role === "viewer" ? "sales_manager" : "viewer";
    }
    $("account-reason").value = "";
    $("account-dialog-error").textContent = "";
    $("account-dialog-confirm").textContent = change.confirm;
    $("account-dialog-confirm").disabled = false;
    var dialog = $("account-dialog");
    if (typeof dialog.showModal === "function") { dialog.showModal(); } else { dialog.setAttribute("open", ""); }
    (kind === "role" ? $("account-new-role") : $("account-reason")).focus();
  }

  function closeAsk() {
    pending = null;
    var dialog = $("account-dialog");
    if (!dialog.open) { return; }
    if (typeof dialog.close === "function") { dialog.close(); } else { dialog.removeAttribute("open"); }
  }

  function confirmChange(ev) {
    ev.preventDefault();
    if (!pending) { return; }
    var reason = $("account-reason").value.trim();
    if (reason.length < 3) {
      $("account-dialog-error").textContent = "Give a reason of at least 3 characters.";
      $("account-reason").focus();
      return;
    }
    var account = pending.account;
    var change = CHANGES[pending.kind];
    var body = { reason: reason };
    if (pending.kind === "role") { body.role = $("account-new-role").value; }
    $("account-dialog-confirm").disabled = true;
    api(change.method, "/api/admin/accounts/" + encodeURIComponent(account.id) + change.path, body)
      .then(function (data) {
        closeAsk();
        say("ok", change.done(data && data.email ? data : account, data));
        return load();
      }, function (err) {
        $("account-dialog-confirm").disabled = false;
        $("account-dialog-error").textContent = (err.status === 409 ? "Refused: " : "Not changed: ") +
          session.describe(err);
      });
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
    $("account-dialog-form").addEventListener("submit", confirmChange);
    $("account-dialog-cancel").addEventListener("click", closeAsk);
    $("account-reason").addEventListener("input", function () { $("account-dialog-error").textContent = ""; });
    $("account-dialog").addEventListener("close", function () { pending = null; });
    var panel = $("panel");
    new MutationObserver(function () {
      if (!panel.hidden) { load(); } else { closeAsk(); say("", ""); render([]); }
    }).observe(panel, { attributes: true, attributeFilter: ["hidden"] });
    if (!panel.hidden) { load(); }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
