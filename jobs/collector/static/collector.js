/* email-lakehouse collector.js: page views on load, clicks on [data-track] elements, and
 * lakehouse.track / addToCart / purchase / identify calls, sent to the collector that served
 * this file. Load it with the site's public write key:
 *   <script async src="https://collect.example.com/collector.js" data-key="SITE_WRITE_KEY"></script>
 * Events are queued and sent in small batches with navigator.sendBeacon (or fetch keepalive),
 * so they survive the page being left. */
(function (window, document) {
  "use strict";
  var script = document.currentScript;
  var key = script && script.getAttribute("data-key");
  var base = (script && script.getAttribute("data-endpoint")) || (script ? new URL(script.src).origin : "");
  var endpoint = base + "/api/collect?k=" + encodeURIComponent(key || "");
  var queue = [], timer = null, sending = [];

  function id() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = Math.random() * 16 | 0; return (c === "x" ? r : (r & 3 | 8)).toString(16);
    });
  }
  function stored(storage, name) {
    try {
      var value = storage.getItem(name);
      if (!value) { value = id(); storage.setItem(name, value); }
      return value;
    } catch (e) { return id(); }
  }
  var anonymousId = stored(window.localStorage, "lh_aid");
  var sessionId = stored(window.sessionStorage, "lh_sid");
  var customerId = null;
  try { customerId = window.localStorage.getItem("lh_cid"); } catch (e) { /* private mode */ }

  function beacon(body) {
    return !!(navigator.sendBeacon && navigator.sendBeacon(endpoint, new Blob([body], {type: "text/plain"})));
  }
  /* fetch keepalive while the page lives (its answer can be awaited), sendBeacon when it goes. */
  function send(leaving) {
    timer = null;
    if (!queue.length) return Promise.resolve();
    var body = JSON.stringify({events: queue.splice(0, 100)});
    var done = (leaving || !window.fetch) ? Promise.resolve(beacon(body)) :
      fetch(endpoint, {method: "POST", body: body, keepalive: true, mode: "cors",
                       headers: {"Content-Type": "text/plain"}})
        .then(function () {}, function () { beacon(body); });
    sending.push(done);
    if (queue.length) send(leaving);
    return done;
  }
  function track(type, props, productId) {
    var event = {event_id: id(), event_type: type, timestamp: new Date().toISOString(),
                 anonymous_id: anonymousId, session_id: sessionId, url: window.location.href,
                 properties: props || {}};
    if (customerId) event.customer_id = customerId;
    if (productId) event.product_id = String(productId);
    queue.push(event);
    if (!timer) timer = setTimeout(send, 50);
    return event.event_id;
  }
  var lakehouse = {
    sessionId: sessionId,
    anonymousId: anonymousId,
    track: track,
    identify: function (id) {
      customerId = String(id);
      try { window.localStorage.setItem("lh_cid", customerId); } catch (e) { /* private mode */ }
    },
    addToCart: function (productId, props) { return track("add_to_cart", props, productId); },
    purchase: function (orderId, props) {
      var p = props || {}; p.order_id = String(orderId); return track("purchase", p, p.product_id);
    },
    /* Sends what is queued; resolves when every send so far has been answered. */
    flush: function () { if (timer) clearTimeout(timer); send(false); return Promise.all(sending); }
  };
  window.lakehouse = lakehouse;

  document.addEventListener("click", function (e) {
    var el = e.target && e.target.closest ? e.target.closest("[data-track]") : null;
    if (!el) return;
    var props = {};
    if (el.getAttribute("data-price")) props.price = el.getAttribute("data-price");
    if (el.getAttribute("data-category")) props.category = el.getAttribute("data-category");
    if (el.textContent) props.label = el.textContent.trim().slice(0, 100);
    track(el.getAttribute("data-track") || "product_click", props, el.getAttribute("data-product-id"));
  }, true);
  window.addEventListener("pagehide", function () { send(true); });
  track("page_view", {title: document.title, referrer: document.referrer || undefined});
})(window, document);
