// Watchtower's console: live regions that refresh themselves and forms that
// act without leaving the page.  Everything works without this file too:
// the pages are complete and the forms post as usual.
(function () {
  "use strict";
  var FRAGMENT = "X-Watchtower-Fragment";

  function fetchFragment(url, name, options) {
    options = options || {};
    options.headers = options.headers || {};
    options.headers[FRAGMENT] = name;
    options.credentials = "same-origin";
    return fetch(url, options);
  }

  // Replace a live region's content, keeping the focus on the element of the
  // same id (a button the user was about to press) if it is still there.
  function replace(region, html) {
    var active = document.activeElement;
    var focusedId = active && region.contains(active) ? active.id : null;
    region.innerHTML = html;
    if (focusedId) {
      var again = document.getElementById(focusedId);
      if (again) { again.focus(); }
    }
  }

  function refresh(region) {
    if (region.dataset.busy) { return Promise.resolve(); }
    return fetchFragment(window.location.href, "live").then(function (response) {
      if (response.redirected) { window.location.assign(response.url); return null; }
      return response.ok ? response.text() : null;
    }).then(function (html) {
      if (html !== null && html !== undefined) { replace(region, html); }
    }).catch(function () { /* offline for a moment: the next tick tries again */ });
  }

  function refreshAll() {
    document.querySelectorAll("[data-live]").forEach(refresh);
  }

  function every(region) {
    var seconds = parseFloat(region.dataset.refresh);
    if (!(seconds > 0)) { return; }
    window.setInterval(function () {
      if (!document.hidden) { refresh(region); }
    }, seconds * 1000);
  }

  function submit(event) {
    var form = event.target;
    if (!form.matches || !form.matches("form[data-action]")) { return; }
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) { event.preventDefault(); return; }
    event.preventDefault();
    var button = form.querySelector("button[type=submit]");
    var region = form.closest("[data-live]");
    if (button) { button.disabled = true; }
    if (region) { region.dataset.busy = "1"; }
    var body = new URLSearchParams(new FormData(form));
    fetchFragment(form.action, "outcome", {
      method: "POST", body: body,
      headers: {"Content-Type": "application/x-www-form-urlencoded"}
    }).then(function (response) {
      if (response.redirected) { window.location.assign(response.url); return null; }
      return response.text();
    }).then(function (html) {
      if (html === null) { return; }
      document.getElementById("outcome").innerHTML = html;
      if (button && document.body.contains(button)) { button.disabled = false; }
      if (region) { delete region.dataset.busy; }
      refreshAll();
    }).catch(function (error) {
      document.getElementById("outcome").textContent = "The request did not reach the console: " + error;
      if (button) { button.disabled = false; }
      if (region) { delete region.dataset.busy; }
    });
  }

  document.addEventListener("submit", submit);
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(every);
  });
})();
