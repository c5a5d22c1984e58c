/* Recobra in-app notices: shows the customer's newest unseen notice as a banner.
 *
 *   <script src="https://billing.example.com/static/recobra-banner.js"
 *           data-token="TOKEN FROM YOUR BACKEND" defer></script>
 *
 * No cookies, no tracking: the token (minted by your backend with an API key) is the
 * only credential, and it only reads and acknowledges this customer's notices.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) { return; }
  var token = script.getAttribute("data-token");
  if (!token) { return; }
  var base = script.getAttribute("data-endpoint") || new URL(script.src).origin;
  var q = "?token=" + encodeURIComponent(token);

  function seen(key) {
    return fetch(base + "/notices/" + encodeURIComponent(key) + "/seen" + q, { method: "POST", mode: "cors" });
  }

  function show(notice) {
    var bar = document.createElement("div");
    bar.setAttribute("role", "status");
    bar.setAttribute("aria-live", "polite");
    bar.className = "recobra-banner";
    bar.style.cssText = "position:fixed;left:0;right:0;top:0;z-index:2147483000;display:flex;gap:1rem;" +
      "align-items:center;justify-content:center;flex-wrap:wrap;padding:.75rem 1rem;background:#fff7e6;" +
      "color:#1f2937;border-bottom:2px solid #b45309;font:15px/1.4 system-ui,sans-serif;";
    var text = document.createElement("p");
    text.style.margin = "0";
    var strong = document.createElement("strong");
    strong.textContent = notice.title;
    text.appendChild(strong);
    text.appendChild(document.createTextNode(" " + notice.body));
    bar.appendChild(text);
    if (notice.link) {
      var action = document.createElement("a");
      action.href = notice.link;
      action.textContent = notice.cta || "Open";
      action.style.cssText = "background:#1d4ed8;color:#fff;padding:.4rem .8rem;border-radius:4px;text-decoration:none;";
      bar.appendChild(action);
    }
    var close = document.createElement("button");
    close.type = "button";
    close.setAttribute("aria-label", document.documentElement.lang.indexOf("es") === 0 ? "Cerrar" : "Close");
    close.textContent = "\u00d7";
    close.style.cssText = "background:none;border:0;font-size:1.4rem;cursor:pointer;color:#1f2937;";
    close.addEventListener("click", function () { bar.remove(); });
    bar.appendChild(close);
    document.body.appendChild(bar);
    seen(notice.key);
  }

  fetch(base + "/notices" + q, { mode: "cors" })
    .then(function (r) { return r.ok ? r.json() : { notices: [] }; })
    .then(function (data) { if (data.notices && data.notices.length) { show(data.notices[0]); } })
    .catch(function () { /* the page works without the banner */ });
})();
