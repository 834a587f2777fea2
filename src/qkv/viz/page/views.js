"use strict";
/* exported QKVViews */
// Attention views shared by the explain page and the notebook views (qkv.viz.model_view, qkv.viz.head_view).
// They read one "view data" object (qkv.viz.notebook.view_data):
//   tokens     [W] words
//   focus      index of the focus word, or null
//   layers     [Lv] the layer numbers shown;  heads [Hv] the head numbers shown
//   attention  [Lv][Hv][W][W], attention[a][b][i][j] = weight of word i (query) on word j (key)
//              in layer layers[a], head heads[b]
//   selected   [layer, head] to enlarge first, or null (the model view)
// and write text with textContent only.
const QKVViews = (function () {
  const SVG = "http://www.w3.org/2000/svg";
  const CONTROLS = /[\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c]/g;
  const HIGHLIGHT = "#d9480f";  // the focus word's row, the selected head
  const HEAD_COLOURS = ["#1f5fbf", "#d9480f", "#2f9e44", "#ae3ec9", "#e8590c", "#0c8599", "#c2255c", "#5f3dc4",
                        "#364fc7", "#087f5b", "#a61e4d", "#495057"];

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    if (attrs) for (const k of Object.keys(attrs)) node.setAttribute(k, String(attrs[k]));
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    if (attrs) for (const k of Object.keys(attrs)) node.setAttribute(k, String(attrs[k]));
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  // Bidirectional controls shown as ⟨U+202E⟩ marks, never obeyed.
  function visible(text) {
    return String(text).replace(CONTROLS, function (c) {
      return "\u27e8U+" + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0") + "\u27e9";
    });
  }
  function short(text) { const t = visible(text); return t.length > 14 ? t.slice(0, 13) + "…" : t; }
  function fmt(x) { return (x === null || x === undefined) ? "–" : Number(x).toFixed(3); }
  // Absolute weight t in [0, 1] -> white ... blue, on a square-root scale so that small weights still show.
  function rgb(t) {
    t = Math.max(0, Math.min(1, Number(t) || 0));
    const a = [255, 255, 255], b = [16, 70, 160];
    return a.map(function (v, i) { return Math.round(v + (b[i] - v) * Math.sqrt(t)); });
  }
  function shade(t) { const c = rgb(t); return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")"; }

  // ---- model view: every layer x head as a small heatmap; one click enlarges it ----
  function modelView(box, data, options) {
    options = options || {};
    const W = data.tokens.length, focus = data.focus;
    // Pixels per weight in a thumbnail: 3 to 12, small enough for a row of heads to fit the box's width.
    const perHead = Math.floor(((box.clientWidth || 900) - 80) / data.heads.length) - 6;
    const cell = Math.max(3, Math.min(12, Math.floor(96 / Math.max(1, W)), Math.floor(perHead / Math.max(1, W))));
    box.classList.add("qkv-model-view");
    box.replaceChildren();
    box.appendChild(el("p", { class: "mv-help" }, "Rows: the word that asks (query); columns: the word it looks at " +
      "(key); darker is more attention (absolute weight, square-root scale)." +
      (focus !== null && focus !== undefined ? " The row of the focus word “" + visible(data.tokens[focus]) +
        "” is outlined." : "") + " Click a head to enlarge it."));
    const zoom = el("div", { class: "mv-zoom", id: (box.id || "mv") + "-zoom" });
    const grid = el("div", { class: "mv-grid", role: "grid", "aria-label": "attention of every layer and head" });
    grid.style.gridTemplateColumns = "max-content repeat(" + data.heads.length + ", max-content)";
    grid.appendChild(el("span"));
    for (const h of data.heads) grid.appendChild(el("span", { class: "mv-label" }, "head " + h));
    const thumbs = [];
    data.layers.forEach(function (layer, a) {
      grid.appendChild(el("span", { class: "mv-label mv-row-label" }, "layer " + layer));
      data.heads.forEach(function (head, b) {
        const canvas = el("canvas", { class: "mv-thumb", width: W * cell, height: W * cell, tabindex: 0,
                                      role: "button", "data-layer": layer, "data-head": head, "data-cell": cell,
                                      title: "layer " + layer + ", head " + head + ": click to enlarge",
                                      "aria-label": "layer " + layer + ", head " + head });
        drawThumb(canvas, data.attention[a][b], cell, focus);
        function choose() {
          show(layer, head);
          if (options.onSelect) options.onSelect(layer, head);
        }
        canvas.addEventListener("click", choose);
        canvas.addEventListener("keydown", function (event) {
          if (event.key !== "Enter" && event.key !== " ") return;
          event.preventDefault();
          choose();
        });
        grid.appendChild(canvas);
        thumbs.push(canvas);
      });
    });
    box.appendChild(zoom);
    box.appendChild(el("div", { class: "mv-scroll" })).appendChild(grid);

    function show(layer, head) {
      const a = data.layers.indexOf(layer), b = data.heads.indexOf(head);
      thumbs.forEach(function (t) {
        t.classList.toggle("mv-selected", Number(t.getAttribute("data-layer")) === layer &&
                                          Number(t.getAttribute("data-head")) === head);
      });
      zoom.replaceChildren();
      if (a < 0 || b < 0) return;
      zoom.setAttribute("data-layer", layer);
      zoom.setAttribute("data-head", head);
      const close = el("button", { type: "button", class: "mv-close" }, "close");
      close.addEventListener("click", function () { zoom.replaceChildren(); zoom.removeAttribute("data-layer"); });
      const title = el("p", { class: "mv-title" }, "Layer " + layer + ", head " + head + " ");
      title.appendChild(close);
      zoom.appendChild(title);
      zoom.appendChild(heatmap(data.tokens, data.attention[a][b], focus));
      if (focus !== null && focus !== undefined) {
        const row = data.attention[a][b][focus];
        const order = row.map(function (_, j) { return j; }).sort(function (x, y) { return row[y] - row[x] || x - y; });
        zoom.appendChild(el("p", { class: "mv-caption" }, "“" + visible(data.tokens[focus]) + "” looks most at " +
          order.slice(0, 3).map(function (j) { return "“" + visible(data.tokens[j]) + "” " + fmt(row[j]); })
            .join(", ")));
      }
    }
    if (options.selected) show(options.selected[0], options.selected[1]);
    return { show: show };
  }

  function drawThumb(canvas, matrix, cell, focus) {
    const context = canvas.getContext("2d");
    const W = matrix.length;
    for (let i = 0; i < W; i++) for (let j = 0; j < W; j++) {
      context.fillStyle = shade(matrix[i][j]);
      context.fillRect(j * cell, i * cell, cell, cell);
    }
    if (focus !== null && focus !== undefined) {  // an outline inside the row's edge: cell centres keep their shade
      context.strokeStyle = HIGHLIGHT;
      context.lineWidth = 1;
      context.strokeRect(0.5, focus * cell + 0.5, W * cell - 1, cell - 1);
    }
  }

  // One head's (W, W) weights as a labelled SVG heatmap, every cell with its weight in a tooltip.
  function heatmap(tokens, matrix, focus) {
    const W = tokens.length;
    const cell = Math.max(8, Math.min(30, Math.floor(520 / Math.max(1, W))));
    const labels = W <= 80, pad = labels ? 92 : 10;
    const map = svg("svg", { class: "mv-heatmap", role: "img", width: pad + W * cell + 4, height: pad + W * cell + 4,
                             "aria-label": "attention heatmap, rows query, columns key" });
    for (let i = 0; i < W; i++) {
      for (let j = 0; j < W; j++) {
        const rect = svg("rect", { class: "mv-cell", x: pad + j * cell, y: pad + i * cell, width: cell, height: cell,
                                   fill: shade(matrix[i][j]), "data-row": i, "data-col": j,
                                   "data-weight": Number(matrix[i][j]).toFixed(4) });
        rect.appendChild(svg("title", null, visible(tokens[i]) + " → " + visible(tokens[j]) + ": " +
                                            fmt(matrix[i][j])));
        map.appendChild(rect);
      }
      if (labels) {
        const size = Math.min(12, cell - 1), weight = i === focus ? 700 : 400;
        map.appendChild(svg("text", { x: pad - 4, y: pad + i * cell + cell / 2 + size / 3, "text-anchor": "end",
                                      "font-size": size, "font-weight": weight }, short(tokens[i])));
        map.appendChild(svg("text", { x: 0, y: 0, "font-size": size, "font-weight": weight,
                                      transform: "translate(" + (pad + i * cell + cell / 2 + size / 3) + "," +
                                        (pad - 4) + ") rotate(-90)" }, short(tokens[i])));
      }
    }
    if (focus !== null && focus !== undefined) {
      map.appendChild(svg("rect", { class: "mv-focus-row", x: pad, y: pad + focus * cell, width: W * cell,
                                    height: cell, fill: "none", stroke: HIGHLIGHT, "stroke-width": 2 }));
    }
    if (labels) {
      map.appendChild(svg("text", { x: 2, y: 14, "font-size": 11, fill: "#5b6475" }, "query ↓"));
      map.appendChild(svg("text", { x: 2, y: 30, "font-size": 11, fill: "#5b6475" }, "key →"));
    }
    return map;
  }

  // ---- head view: one layer, lines from each word (left) to the words it attends to (right), a colour per head ----
  function headView(box, data) {
    const W = data.tokens.length, focus = data.focus;
    const state = { layer: 0, heads: data.heads.map(function () { return true; }),
                    pinned: focus === null || focus === undefined ? null : focus, hover: null };
    box.classList.add("qkv-head-view");
    box.replaceChildren();
    box.appendChild(el("p", { class: "mv-help" }, "Each line joins a word (left, the query) to a word it attends to " +
      "(right, the key); the darker the line, the larger the weight, one colour per head. Point at a word on the left " +
      "to see its lines, click it to keep them (click again for every word's lines)."));
    const controls = el("div", { class: "hv-controls" });
    const layerSelect = el("select", { class: "hv-layer", "aria-label": "layer" });
    data.layers.forEach(function (layer, a) { layerSelect.appendChild(el("option", { value: a }, "layer " + layer)); });
    layerSelect.addEventListener("change", function () { state.layer = Number(layerSelect.value); draw(); });
    const label = el("label", null, "Layer ");
    label.appendChild(layerSelect);
    controls.appendChild(label);
    data.heads.forEach(function (head, b) {
      const chip = el("button", { type: "button", class: "hv-head", "aria-pressed": "true", "data-head": head },
                      "head " + head);
      chip.style.borderColor = HEAD_COLOURS[b % HEAD_COLOURS.length];
      chip.style.background = HEAD_COLOURS[b % HEAD_COLOURS.length];
      chip.addEventListener("click", function () {
        state.heads[b] = !state.heads[b];
        chip.setAttribute("aria-pressed", state.heads[b] ? "true" : "false");
        chip.style.background = state.heads[b] ? HEAD_COLOURS[b % HEAD_COLOURS.length] : "#ffffff";
        chip.style.color = state.heads[b] ? "#ffffff" : "#1d2433";
        draw();
      });
      controls.appendChild(chip);
    });
    box.appendChild(controls);
    const rowHeight = 22, width = 420, left = 150, right = width - 150;
    const map = svg("svg", { class: "hv-lines", width: width, height: W * rowHeight + 10, role: "img",
                             "aria-label": "attention lines of the selected heads" });
    const lines = svg("g");
    map.appendChild(lines);
    const leftWords = [];
    for (let i = 0; i < W; i++) {
      const y = 5 + i * rowHeight + rowHeight / 2;
      const weight = i === focus ? 700 : 400;
      const word = svg("text", { class: "hv-query", x: left - 8, y: y + 4, "text-anchor": "end", "font-size": 13,
                                 "font-weight": weight, "data-index": i, tabindex: 0 }, short(data.tokens[i]));
      word.addEventListener("mouseenter", function () { state.hover = i; draw(); });
      word.addEventListener("mouseleave", function () { state.hover = null; draw(); });
      word.addEventListener("focus", function () { state.hover = i; draw(); });
      word.addEventListener("blur", function () { state.hover = null; draw(); });
      word.addEventListener("click", function () { state.pinned = state.pinned === i ? null : i; draw(); });
      map.appendChild(word);
      leftWords.push(word);
      map.appendChild(svg("text", { class: "hv-key", x: right + 8, y: y + 4, "font-size": 13, "font-weight": weight,
                                    "data-index": i }, short(data.tokens[i])));
    }
    box.appendChild(el("div", { class: "mv-scroll" })).appendChild(map);
    const caption = el("p", { class: "mv-caption hv-caption" });
    box.appendChild(caption);

    function draw() {
      lines.replaceChildren();
      const source = state.hover !== null ? state.hover : state.pinned;
      map.setAttribute("data-layer", data.layers[state.layer]);
      map.setAttribute("data-source", source === null ? "all" : source);
      leftWords.forEach(function (word, i) {
        word.setAttribute("fill", i === source ? HIGHLIGHT : "#1d2433");
      });
      const y = function (i) { return 5 + i * rowHeight + rowHeight / 2; };
      data.heads.forEach(function (head, b) {
        if (!state.heads[b]) return;
        const matrix = data.attention[state.layer][b];
        for (let i = 0; i < W; i++) {
          if (source !== null && i !== source) continue;
          for (let j = 0; j < W; j++) {
            const w = matrix[i][j];
            if (!(w > 0.005)) continue;
            lines.appendChild(svg("line", { x1: left, y1: y(i), x2: right, y2: y(j), "data-head": head,
                                            "data-query": i, "data-key": j,
                                            stroke: HEAD_COLOURS[b % HEAD_COLOURS.length],
                                            "stroke-width": 2, "stroke-opacity": Math.min(1, w).toFixed(3) }));
          }
        }
      });
      caption.textContent = source === null ? "Every word's lines, layer " + data.layers[state.layer] + "."
        : "“" + visible(data.tokens[source]) + "”, layer " + data.layers[state.layer] + ": " +
          data.heads.filter(function (_, b) { return state.heads[b]; }).map(function (head) {
            const row = data.attention[state.layer][data.heads.indexOf(head)][source];
            let best = 0;
            for (let j = 1; j < W; j++) if (row[j] > row[best]) best = j;
            return "head " + head + " → “" + visible(data.tokens[best]) + "” " + fmt(row[best]);
          }).join(" · ");
    }
    draw();
    return { draw: draw };
  }

  return { shade: shade, modelView: modelView, headView: headView, el: el, svg: svg, visible: visible };
})();
