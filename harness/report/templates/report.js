// Renders every figure from the JSON payload and records what a browser test checks in
// window.__reportChecks: figures, rendered, withData, empty (ids), errors, done, renderMs.
(function () {
  var payload = JSON.parse(document.getElementById('report-data').textContent);
  var checks = {figures: payload.figures.length, rendered: 0, withData: 0, empty: [], errors: [], done: false};
  window.__reportChecks = checks;
  function points(trace) {
    var values = trace.type === 'heatmap'
      ? [].concat.apply([], (trace.z || []).map(function (r) { return Array.from(r); }))
      : Array.from((trace.orientation === 'h' ? trace.x : trace.y) || []);  // a horizontal bar's values are x
    return values.filter(function (v) { return v !== null && v !== undefined && isFinite(v); }).length;
  }
  var config = {responsive: true, displaylogo: false, modeBarButtonsToRemove: ['select2d', 'lasso2d']};
  var jobs = payload.figures.map(function (f) {
    var div = document.getElementById(f.id);
    var layout = Object.assign({}, f.layout, {template: payload.template});
    return Plotly.newPlot(div, f.data, layout, config).then(function (gd) {
      checks.rendered += 1;
      var n = gd.data.reduce(function (s, t) { return s + points(t); }, 0);
      if (n > 0 && gd.querySelector('.main-svg')) { checks.withData += 1; } else { checks.empty.push(f.id); }
    }).catch(function (e) { checks.errors.push(f.id + ': ' + e); });
  });
  Promise.all(jobs).then(function () { checks.renderMs = performance.now(); checks.done = true; });

  function key(cell) {
    var t = cell.textContent.trim();
    if (t === '\u2014' || t === '') return null;
    var n = Number(t.replace(/,/g, ''));
    return isNaN(n) ? t.toLowerCase() : n;
  }
  document.querySelectorAll('table.sortable thead th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var table = th.closest('table'), body = table.tBodies[0];
      var dir = th.getAttribute('data-dir') === 'asc' ? 'desc' : 'asc';
      table.querySelectorAll('thead th').forEach(function (h) { h.removeAttribute('data-dir'); });
      th.setAttribute('data-dir', dir);
      var index = Array.prototype.indexOf.call(th.parentNode.children, th);
      var rows = Array.from(body.rows).map(function (r) { return [key(r.cells[index]), r]; });
      rows.sort(function (a, b) {
        if (a[0] === null) return b[0] === null ? 0 : 1;
        if (b[0] === null) return -1;
        var c = (typeof a[0] === typeof b[0]) ? (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)
                                              : (typeof a[0] === 'number' ? -1 : 1);
        return dir === 'asc' ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r[1]); });
    });
  });
})();
