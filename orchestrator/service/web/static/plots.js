// Small plots from the state database: build durations, queue depth (uPlot).
(function () {
  "use strict";
  function plot(target, title, data, label, stepped) {
    var box = document.createElement("div");
    box.className = "plot-box";
    var h = document.createElement("h3");
    h.textContent = title;
    box.appendChild(h);
    target.appendChild(box);
    if (!data[0].length) {
      var none = document.createElement("p");
      none.className = "muted";
      none.textContent = "nothing yet";
      box.appendChild(none);
      return;
    }
    var line = { label: label, stroke: "#1f5fa8", width: 1.5, fill: "rgba(31,95,168,0.08)",
                 points: { show: data[0].length < 40 } };
    if (stepped) line.paths = uPlot.paths.stepped({ align: 1 });
    new uPlot({
      width: 360, height: 140, legend: { show: false },
      scales: {
        // One build: an hour around it, not an axis of years.
        x: data[0].length === 1 ? { time: true, auto: false, range: [data[0][0] - 1800, data[0][0] + 1800] }
                                : { time: true },
        y: { range: function (u, min, max) { return [0, Math.max(1, max * 1.15)]; } },
      },
      series: [{}, line],
      axes: [{ size: 30 }, { size: 45 }],
    }, data, box);
  }
  document.querySelectorAll(".plot, .plots").forEach(function (target) {
    fetch(target.getAttribute("data-src")).then(function (r) { return r.json(); }).then(function (d) {
      if (target.getAttribute("data-kind") === "queue") {
        plot(target, "layers waiting or building", d.queue, "layers", true);
        return;
      }
      var names = Object.keys(d.durations);
      if (!names.length) plot(target, "build seconds", [[], []], "seconds");
      names.forEach(function (name) { plot(target, name + ": build seconds", d.durations[name], "seconds"); });
    });
  });
})();
