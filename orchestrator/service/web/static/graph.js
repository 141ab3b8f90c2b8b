// The hierarchy page: restates each node as the daemon's events arrive (SSE),
// without a new layout; fetches a new picture when the layout changes.
(function () {
  "use strict";
  var graph = document.getElementById("graph");
  var live = document.getElementById("live");
  var counts = document.getElementById("counts");
  var nodes = new Map();
  var WIDTH = 30;
  var WORDS = { up_to_date: "up to date", built: "up to date", reused: "up to date" };

  function cut(text) { return text.length <= WIDTH ? text : text.slice(0, WIDTH - 1) + "\u2026"; }

  function elapsed(since) {
    var s = Math.max(0, Math.floor(Date.now() / 1000 - since));
    if (s < 60) return s + "s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + "m" + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
  }

  function built(at) {
    if (!at) return "never built";
    return "built " + new Date(at * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function words(n) {
    if (n.state === "building" && n.since) return n.text.replace(/^building/, "building " + elapsed(n.since));
    return n.text;
  }

  function paint(n) {
    var g = document.getElementById("layer-" + n.id);
    if (!g) return;
    g.setAttribute("class", "node layer state-" + n.state);
    g.setAttribute("data-state", n.state);
    var texts = g.querySelectorAll("text");
    if (texts.length >= 4) {
      texts[1].textContent = cut(words(n));
      texts[3].textContent = built(n.built);
    }
  }

  function tally() {
    var by = {};
    nodes.forEach(function (n) {
      var word = WORDS[n.state] || n.state.replace("_", " ");
      by[word] = (by[word] || 0) + 1;
    });
    var parts = Object.keys(by).sort().map(function (k) { return by[k] + " " + k; });
    counts.textContent = nodes.size + " layers: " + parts.join(", ");
    // For whoever measures the page: when every node first showed its state.
    if (!graph.hasAttribute("data-drawn-ms")) {
      graph.setAttribute("data-drawn-ms", String(Math.round(performance.now())));
    }
    graph.setAttribute("data-nodes", String(nodes.size));
  }

  function relayout() {
    fetch("/graph.svg", { cache: "no-store" }).then(function (r) { return r.text(); }).then(function (svg) {
      graph.innerHTML = svg;
      nodes.forEach(paint);
    });
  }

  var source = new EventSource("/events");
  source.addEventListener("open", function () { live.setAttribute("data-live", "on"); live.textContent = "live"; });
  source.addEventListener("error", function () { live.setAttribute("data-live", "off"); live.textContent = "reconnecting\u2026"; });
  source.addEventListener("nodes", function (e) {
    JSON.parse(e.data).forEach(function (n) { nodes.set(n.id, n); paint(n); });
    tally();
  });
  source.addEventListener("layout", function (e) {
    if (String(e.data) !== graph.getAttribute("data-layout")) {
      graph.setAttribute("data-layout", String(e.data));
      relayout();
    }
  });
  setInterval(function () {
    nodes.forEach(function (n) { if (n.state === "building") paint(n); });
  }, 1000);
})();
