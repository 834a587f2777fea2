/* global QKVViews */  // views.js, put before this script in the same script element
"use strict";
(function () {
  const R = JSON.parse(document.getElementById("report").textContent);
  const L = R.model.layers, H = R.model.heads, W = R.tokens.length;
  const FOCUS = R.focus.index;
  const PALETTE = ["#1f5fbf", "#d9480f", "#2f9e44", "#ae3ec9", "#e8590c", "#0c8599"];
  const state = { layer: R.walkthrough.layer, head: R.walkthrough.head, source: FOCUS, pinned: FOCUS,
                  role: "previous", focusMode: "mean", allColumns: false };
  let modelView = null;  // section 9, drawn from the same (L, H, W, W) matrices as the heatmap

  // ---- helpers ----
  // DOM helpers shared with the views (views.js runs first on the page)
  const el = QKVViews.el, svg = QKVViews.svg, visible = QKVViews.visible;
  function fmt(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    return Number(x).toFixed(digits === undefined ? 3 : digits);
  }
  function pct(x) { return (x === null || x === undefined) ? "–" : (100 * x).toFixed(1) + "%"; }
  const shade = QKVViews.shade;  // white -> blue, t in [0, 1], square-root scale (views.js)
  // Black or white text, whichever contrasts more with the shade: at least 4.58:1 (WCAG AA) on every shade.
  function inkOn(colour) {
    const lum = colour.match(/\d+/g).map(function (v) {
      v = Number(v) / 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    const y = 0.2126 * lum[0] + 0.7152 * lum[1] + 0.0722 * lum[2];
    return (y + 0.05) * (y + 0.05) < 1.05 * 0.05 ? "#ffffff" : "#000000";
  }
  function paint(node, t) {
    const colour = shade(t);
    node.style.backgroundColor = colour;
    node.style.color = inkOn(colour);
  }
  function bar(value, full, alt) {
    const width = full > 0 ? Math.max(0, Math.min(1, value / full)) * 120 : 0;
    return el("span", { class: alt ? "bar alt" : "bar", style: "width:" + width.toFixed(1) + "px" });
  }
  function row(cells, cls) {
    const tr = el("tr", cls ? { class: cls } : null);
    for (const c of cells) tr.appendChild(c);
    return tr;
  }
  function th(text, cls) { return el("th", cls ? { class: cls, scope: "col" } : { scope: "col" }, text); }
  function td(text, cls) { return el("td", cls ? { class: cls } : null, text); }
  function tokenLabel(i) { return visible(R.tokens[i]); }
  function shortLabel(i) { const t = tokenLabel(i); return t.length > 14 ? t.slice(0, 13) + "…" : t; }
  function maxOf(list) { let m = 0; for (const v of list) if (v !== null && v > m) m = v; return m; }
  function parked(i) { return R.kinds[i] === "special" || R.kinds[i] === "punctuation" || R.kinds[i] === "sink"; }
  const SET_ASIDE = R.set_aside || "[CLS], [SEP] and punctuation";
  const SET_ASIDE_SHORT = (R.special_tokens || ["[CLS]", "[SEP]"]).concat(["punct."]).join("/");
  const IMPORTANCE = 1000;  // ablation importance is shown as (1 - cos) x 1000, as in the terminal and figures
  function afterLayer(i) { return i === 0 ? "emb" : String(i - 1); }  // hidden state i: after layer i - 1
  const LONG = 30;  // a table with more rows (or columns) than this shows only its top ones, and a button for all
  const TOP_ROWS = 15;
  function atMost(x) { return (Math.ceil(Number(x) * 1000) / 1000).toFixed(3); }
  // The report's one ranking (qkv.inspect.explain.rank_attention): where a word looks most, by exact weight.
  // Every word has one when the report keeps the matrices; a long input keeps the focus word's only.
  function rankingOf(layer, head, source) {
    if (R.ranked) {
      return { order: R.ranked.order[layer][head][source], weights: R.ranked.weights[layer][head][source],
               parked_share: R.ranked.parked_share[layer][head][source] };
    }
    return R.heads[layer * H + head].ranked;
  }
  function rankedItems(ranked, source, count) {
    return ranked.order.slice(0, count).map(function (j, k) {
      return "“" + tokenLabel(j) + "”" + (j === source ? " (itself)" : "") + " " + fmt(ranked.weights[k], 3);
    });
  }
  // Rows of a table: those shown(k) is true for now, the rest behind a "show all" button below the table's box
  // (always in view, however wide the table), with a note of what they hold ("… 361 more keys, each at most 0.004").
  function limitRows(table, rows, shown, note) {
    let hidden = 0;
    rows.forEach(function (r, k) { if (!shown(k)) { r.hidden = true; hidden++; } table.appendChild(r); });
    if (!hidden) return;
    const more = el("p", { id: table.id + "-more", class: "more-note" }, "… " + hidden + " more " + note + " ");
    const button = el("button", { type: "button", class: "show-all" }, "show all " + rows.length);
    button.addEventListener("click", function () {
      rows.forEach(function (r) { r.hidden = false; }); more.remove(); markScrollable();
    });
    more.appendChild(button);
    table.closest(".scroll").after(more);
  }
  // Boxes wider than the screen (tables, the heatmap) get a "scroll →" hint and a shaded right edge.
  function markScrollable() {
    document.querySelectorAll(".scroll, #heatmap-box").forEach(function (box) {
      let frame = box.parentElement;
      if (!frame.classList.contains("scroll-frame")) {
        frame = el("div", { class: "scroll-frame" });
        box.parentElement.insertBefore(frame, box);
        frame.appendChild(el("div", { class: "scroll-hint", "aria-hidden": "true" },
                             "scroll → (wider than the screen)"));
        frame.appendChild(box);
        box.addEventListener("scroll", function () { markEnd(box, frame); });
      }
      frame.classList.toggle("overflowing", box.scrollWidth > box.clientWidth + 1);
      markEnd(box, frame);
    });
  }
  function markEnd(box, frame) {
    frame.classList.toggle("at-end", box.scrollLeft + box.clientWidth >= box.scrollWidth - 1);
  }
  window.addEventListener("resize", markScrollable);

  // ---- controls ----
  const layerSelect = document.getElementById("layer-select");
  for (let l = 0; l < L; l++) layerSelect.appendChild(el("option", { value: l }, "layer " + l));
  layerSelect.addEventListener("change", function () { select(Number(layerSelect.value), state.head); });
  const headBox = document.getElementById("head-buttons");
  const headButtons = [];
  for (let h = 0; h < H; h++) {
    const b = el("button", { type: "button", class: "head-btn", id: "head-btn-" + h, "data-head": h,
                             "data-layer": state.layer, "aria-pressed": "false", title: "head " + h }, h);
    b.addEventListener("click", function () { select(state.layer, h); });
    headBox.appendChild(b);
    headButtons.push(b);
  }

  function select(layer, head) {
    state.layer = layer; state.head = head;
    layerSelect.value = String(layer);
    headButtons.forEach(function (b, h) {
      b.setAttribute("data-layer", layer);
      b.setAttribute("aria-pressed", h === head ? "true" : "false");
    });
    document.getElementById("current-head").textContent = "showing layer " + layer + ", head " + head;
    drawTokens(); drawHeatmap(); drawSummary(); drawFocus(); markGrids();
    if (modelView) modelView.show(layer, head);
  }

  // ---- 1. tokens ----
  const tokenBox = document.getElementById("tokens");
  const tokenSpans = [];
  for (let i = 0; i < W; i++) {
    const s = el("span", { class: "tok kind-" + R.kinds[i] + (i === FOCUS ? " focus" : ""), "data-index": i,
                           tabindex: 0, role: "button" }, tokenLabel(i));
    s.addEventListener("mouseenter", function () { state.source = i; drawTokens(); highlightRow(); });
    s.addEventListener("focus", function () { state.source = i; drawTokens(); highlightRow(); });
    s.addEventListener("mouseleave", function () { state.source = state.pinned; drawTokens(); highlightRow(); });
    s.addEventListener("click", function () { pin(i); });
    s.addEventListener("keydown", function (event) {
      const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[event.key];
      if (step !== undefined || event.key === "Home" || event.key === "End") {
        event.preventDefault();  // the arrows would scroll the page
        const next = event.key === "Home" ? 0 : event.key === "End" ? W - 1 : Math.max(0, Math.min(W - 1, i + step));
        tokenSpans[next].focus();
        return;
      }
      if (event.key !== "Enter" && event.key !== " ") return;
      event.preventDefault();  // Space would scroll the page
      pin(i);
    });
    tokenBox.appendChild(s);
    tokenSpans.push(s);
  }
  function pin(i) {
    state.pinned = i; state.source = i; drawTokens(); highlightRow(); drawSummary();
  }
  function drawTokens() {
    // Long inputs keep no (W, W) matrices: only the focus word's own attention rows.
    const weights = R.attention ? R.attention[state.layer][state.head][state.source]
      : R.focus_attention[state.layer][state.head];
    if (!R.attention) state.source = FOCUS;
    const full = maxOf(weights);
    tokenSpans.forEach(function (s, j) {
      s.setAttribute("data-weight", fmt(weights[j], 4));
      s.setAttribute("title", tokenLabel(state.source) + " → " + tokenLabel(j) + ": " + fmt(weights[j], 3));
      s.classList.toggle("source", j === state.source);
      if (j === state.source) { s.style.backgroundColor = "#fff4d6"; s.style.color = ""; }
      else paint(s, full > 0 ? weights[j] / full : 0);
    });
    const ranked = rankingOf(state.layer, state.head, state.source);
    const caption = document.getElementById("token-caption");
    caption.textContent = "“" + tokenLabel(state.source) + "” in layer " + state.layer + ", head " + state.head +
      " looks most at: " + rankedItems(ranked, state.source, 3).join(", ") + " · " + pct(ranked.parked_share) +
      " to " + SET_ASIDE;
    caption.setAttribute("data-order", ranked.order.slice(0, 3).join(","));
  }

  // ---- 2. heatmap ----
  const hasMatrices = Boolean(R.attention);
  const cell = Math.max(6, Math.min(30, Math.floor(520 / W)));
  const showLabels = W <= 80;
  const pad = showLabels ? 92 : 10;
  const hm = svg("svg", { id: "heatmap", role: "img", width: pad + W * cell + 4, height: pad + W * cell + 4,
                          "aria-label": "attention heatmap of the selected head" });
  const hmCells = [];
  for (let i = 0; hasMatrices && i < W; i++) {
    hmCells.push([]);
    for (let j = 0; j < W; j++) {
      const r = svg("rect", { class: "cell", x: pad + j * cell, y: pad + i * cell, width: cell, height: cell,
                               "data-row": i, "data-col": j });
      r.appendChild(svg("title"));
      hm.appendChild(r);
      hmCells[i].push(r);
    }
    if (showLabels) {
      const fs = Math.min(12, cell - 1);
      hm.appendChild(svg("text", { class: "lbl", x: pad - 4, y: pad + i * cell + cell / 2 + fs / 3,
                                    "text-anchor": "end", "font-size": fs, "font-weight": i === FOCUS ? 700 : 400 },
                         shortLabel(i)));
      hm.appendChild(svg("text", { class: "lbl", x: 0, y: 0, "text-anchor": "start", "font-size": fs,
                                    "font-weight": i === FOCUS ? 700 : 400,
                                    transform: "translate(" + (pad + i * cell + cell / 2 + fs / 3) + "," + (pad - 4) +
                                      ") rotate(-90)" }, shortLabel(i)));
    }
  }
  if (showLabels && hasMatrices) {
    hm.appendChild(svg("text", { x: 2, y: 14, "font-size": 11, fill: "#5b6475" }, "query ↓"));
    hm.appendChild(svg("text", { x: 2, y: 30, "font-size": 11, fill: "#5b6475" }, "key →"));
  }
  document.getElementById("heatmap-box").appendChild(hasMatrices ? hm : el("p", { class: "help" },
    "This input is long: the report keeps the focus word's attention and streamed statistics " +
    "rather than every head's full matrix, so there is no heatmap."));
  (function () {
    const key = document.getElementById("shade-key");
    for (const w of [0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1]) paint(key.appendChild(el("span", null, w)), w);
  })();
  function drawHeatmap() {
    if (!hasMatrices) return;
    const A = R.attention[state.layer][state.head];
    for (let i = 0; i < W; i++) for (let j = 0; j < W; j++) {
      const r = hmCells[i][j], w = A[i][j];
      r.setAttribute("fill", shade(w));
      r.setAttribute("data-weight", fmt(w, 4));
      r.firstChild.textContent = tokenLabel(i) + " → " + tokenLabel(j) + ": " + fmt(w, 3);
    }
    hm.setAttribute("data-layer", state.layer);
    hm.setAttribute("data-head", state.head);
    highlightRow();
  }
  function highlightRow() {
    for (let i = 0; hasMatrices && i < W; i++) for (let j = 0; j < W; j++)
      hmCells[i][j].classList.toggle("row-hl", i === state.source);
  }
  function drawSummary() {
    const box = document.getElementById("head-summary");
    box.replaceChildren();
    const s = R.heads[state.layer * H + state.head];
    const word = R.ranked ? state.pinned : FOCUS;  // a long input keeps the focus word's ranking only
    box.appendChild(el("h3", null, "Layer " + state.layer + ", head " + state.head + ": “" + tokenLabel(word) +
                                   "”" + (word === FOCUS ? " (the focus word)" : "")));
    const dl = el("dl");
    function item(term, content) {
      dl.appendChild(el("dt", null, term));
      const dd = el("dd");
      if (typeof content === "string") dd.textContent = content; else dd.appendChild(content);
      dl.appendChild(dd);
    }
    function pairs(list) {
      return list.map(function (p) { return "“" + visible(p[0]) + "” " + fmt(p[1], 3); }).join(", ") || "–";
    }
    const ranked = rankingOf(state.layer, state.head, word);
    const list = el("ol", { id: "panel-ranking", class: "ranking" });
    rankedItems(ranked, word, 5).forEach(function (text, k) {
      list.appendChild(el("li", { "data-index": ranked.order[k] }, text));
    });
    item("looks most at", list);
    item("share to " + SET_ASIDE, pct(ranked.parked_share));
    if (word === FOCUS && s) {
      item("among content (without " + SET_ASIDE + " and renormalised)", pairs(s.top_content));
      item("entropy (nats; 0 = one word, ln W = uniform)", fmt(s.entropy, 2) + " of " + fmt(Math.log(W), 2));
      item("importance (ablation), (1 − cos) × 1000", fmt(R.ablation[state.layer][state.head] * IMPORTANCE, 1));
    } else {
      item("entropy and importance", "shown for the focus word “" + visible(R.focus.token) + "”");
    }
    box.appendChild(dl);
  }

  // ---- 3. walkthrough ----
  (function () {
    const wt = R.walkthrough;
    const N = wt.weights.length;
    // 1/√d unless the layer runs with another scale (set_attention(..., scale=))
    const standard = Math.abs(wt.scale * Math.sqrt(wt.query.length) - 1) < 1e-6;
    const scaleNote = standard ? " (1/√d)" : " (set for this layer; 1/√d would be " +
      fmt(1 / Math.sqrt(wt.query.length), 4) + ")";
    const pieces = R.pieces || [];
    document.getElementById("walkthrough-info").textContent = "Layer " + wt.layer + ", head " + wt.head +
      ": the query of piece “" + visible(pieces[wt.query_piece]) + "” (position " + wt.query_piece +
      "), head dimension d = " + wt.query.length + ", scale " + fmt(wt.scale, 4) + scaleNote + "." +
      (wt.window ? " The layer runs with window (" + wt.window.join(", ") + "): the query sees only these " + N +
        " of the " + pieces.length + " pieces." :
        wt.causal ? " The model is causal: the query sees only the " + N + " pieces up to itself." : "") +
      (wt.chosen ? " Why this head: " + visible(wt.chosen) + "." : "");
    document.getElementById("walkthrough-select").addEventListener("click", function () {
      select(wt.layer, wt.head);
      const target = document.getElementById("heatmap-section");  // its heading just below the sticky controls
      target.style.scrollMarginTop = (document.getElementById("controls").offsetHeight + 8) + "px";
      target.scrollIntoView();
    });
    const table = document.getElementById("walkthrough-table");
    const scaled = standard ? "× 1/√d = score" : "× scale = score";
    table.appendChild(row([th("#"), th("key piece", "text"), th("query · key"), th(scaled),
                           th("softmax weight"), th("", "text")]));
    const full = maxOf(wt.weights);
    const keyPieces = wt.key_pieces || wt.weights.map(function (_, j) { return j; });  // each key's piece
    // A long input: its keys by exact weight, largest first, the top ones shown; else in sentence order.
    const ranked = N > LONG && wt.order;
    const keys = ranked ? wt.order : wt.weights.map(function (_, j) { return j; });
    const rows = keys.map(function (j) {
      const b = td(null, "barcell"); b.appendChild(bar(wt.weights[j], full));
      const p = keyPieces[j];
      return row([td(p, "num"), td(visible(pieces[p] === undefined ? "?" : pieces[p]), "text"),
                  td(fmt(wt.dot[j], 3), "num"), td(fmt(wt.scores[j], 3), "num"),
                  td(fmt(wt.weights[j], 4), "num"), b], p === wt.query_piece ? "hl" : null);
    });
    if (ranked) {
      document.getElementById("walkthrough-info").textContent += " Rows: the " + N + " keys by weight, largest " +
        "first.";
      limitRows(table, rows, function (k) { return k < TOP_ROWS; },
                "keys, each at most " + atMost(wt.weights[wt.order[TOP_ROWS]]));
    } else {
      rows.forEach(function (r) { table.appendChild(r); });
    }
    const sum = wt.weights.reduce(function (a, b) { return a + (b || 0); }, 0);
    table.appendChild(row([td(""), td("sum", "text"), td(""), td(""), td(fmt(sum, 4), "num"), td("")]));
    const box = document.getElementById("walkthrough-vectors");
    function vec(v) { return "[" + v.slice(0, 8).map(function (x) { return fmt(x, 2); }).join(", ") +
                             (v.length > 8 ? ", …" : "") + "]"; }
    box.appendChild(el("span", null, "query = " + vec(wt.query)));
    box.appendChild(el("br"));
    box.appendChild(el("span", null, "output = Σ weight × value = " + vec(wt.output)));
    box.appendChild(el("br"));
    box.appendChild(el("span", { class: wt.matches_model ? "ok" : "bad" },
      (wt.matches_model ? "✓ matches the model's own output (max difference "
                        : "✗ differs from the model's own output (max difference ") +
        Number(wt.max_difference).toExponential(1) + ")"));
  })();

  // ---- 4. focus attention per layer ----
  const focusMode = document.getElementById("focus-mode");
  focusMode.addEventListener("change", function () { state.focusMode = focusMode.value; drawFocus(); });
  function focusRow(l) {
    const rows = R.focus_attention[l];
    if (state.focusMode === "head") return rows[state.head];
    const out = new Array(W).fill(0);
    for (let h = 0; h < H; h++) for (let j = 0; j < W; j++) out[j] += (rows[h][j] || 0) / H;
    return out;
  }
  // The columns of a long input: the words in the ranking of some row (layer), in sentence order, and the
  // largest weight among the words left out.
  function focusColumns() {
    const all = [];
    for (let j = 0; j < W; j++) all.push(j);
    if (W <= LONG || state.allColumns) return { columns: all, below: null };
    const chosen = new Set([FOCUS]);
    let below = 0;
    for (let l = 0; l < L; l++) {
      const ranked = state.focusMode === "head" ? R.heads[l * H + state.head].ranked
        : { order: R.layer_ranked.order[l], left_out_max: R.layer_ranked.left_out_max[l] };
      ranked.order.forEach(function (j) { chosen.add(j); });
      below = Math.max(below, ranked.left_out_max);
    }
    return { columns: all.filter(function (j) { return chosen.has(j); }), below: below };
  }
  function drawFocus() {
    const all = document.getElementById("focus-table"), content = document.getElementById("focus-content-table");
    all.replaceChildren(); content.replaceChildren();
    const shown = focusColumns(), columns = shown.columns;
    let note = document.getElementById("focus-columns-note");
    if (!note) {
      note = el("p", { id: "focus-columns-note", class: "columns-note" });
      all.parentElement.parentElement.insertBefore(note, all.parentElement);
    }
    note.replaceChildren();
    if (W > LONG) {
      const toggle = el("button", { type: "button", class: "show-all", id: "focus-columns-toggle" },
                        state.allColumns ? "show the top ones only" : "show all " + W);
      toggle.addEventListener("click", function () { state.allColumns = !state.allColumns; drawFocus(); });
      note.appendChild(document.createTextNode(state.allColumns ? "Columns: all " + W + " words. " :
        "Columns: the " + columns.length + " words among the " + R.layer_ranked.order[0].length + " largest weights " +
        "of some row (and the focus word), in sentence order; the other " + (W - columns.length) + " get at most " +
        atMost(shown.below) + " in every row. "));
      note.appendChild(toggle);
    }
    const kept = columns.filter(function (j) { return !parked(j); });
    const label = state.focusMode === "head" ? "head " + state.head : "mean of heads";
    const head1 = [th(label, "text")], head2 = [th(label, "text")];
    for (const j of columns) head1.push(th(tokenLabel(j)));
    head1.push(th("to " + SET_ASIDE_SHORT));
    for (const j of kept) head2.push(th(tokenLabel(j)));
    all.appendChild(row(head1)); content.appendChild(row(head2));
    for (let l = 0; l < L; l++) {
      const w = focusRow(l);
      let share = 0;
      for (let j = 0; j < W; j++) if (parked(j)) share += w[j];
      const r1 = [td("layer " + l, "text")], r2 = [td("layer " + l, "text")];
      for (const j of columns) { const c = td(fmt(w[j], 2), "shade num"); paint(c, w[j]); r1.push(c); }
      const sc = td(pct(share), "num"); r1.push(sc);
      const rest = 1 - share;
      for (const j of kept) {
        const v = rest > 1e-9 ? w[j] / rest : 0;
        const c = td(fmt(v, 2), "shade num"); paint(c, v); r2.push(c);
      }
      all.appendChild(row(r1, l === state.layer ? "hl" : null));
      content.appendChild(row(r2, l === state.layer ? "hl" : null));
    }
    markScrollable();
  }

  // ---- 5. senses ----
  (function () {
    const box = document.getElementById("senses-box");
    const S = R.senses;
    if (!S || !S.cosine || !S.cosine.length) {
      box.appendChild(el("p", { class: "help" }, "No sense examples for “" + visible(R.focus.token) +
        "”, so no sense view. Built-in examples exist for “bank” only; give your own on the command line with " +
        "qkv explain --senses \"sense1: sentence | sentence; sense2: sentence\", or with senses= in Python."));
      return;
    }
    const names = S.names, rows = S.cosine, n = rows.length;
    const series = names.map(function (name, s) {
      return { name: name, values: rows.map(function (r) { return r[s]; }) };
    });
    if (S.contrast_cosine) {
      series.push({ name: "the same word in the contrast sentence", values: S.contrast_cosine, dashed: true });
    }
    let lo = Infinity, hi = -Infinity;
    for (const s of series) for (const v of s.values) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!(hi > lo)) { lo -= 0.05; hi += 0.05; }
    const margin = (hi - lo) * 0.08; lo -= margin; hi = Math.min(1, hi + margin);  // a cosine is at most 1
    const Wp = 620, Hp = 300, left = 56, right = 16, top = 14, bottom = 40;
    const x = function (i) { return left + (n > 1 ? i / (n - 1) : 0.5) * (Wp - left - right); };
    const y = function (v) { return top + (hi - v) / (hi - lo) * (Hp - top - bottom); };
    const plot = svg("svg", { id: "sense-plot", viewBox: "0 0 " + Wp + " " + Hp, role: "img",
                              "aria-label": "cosine to each sense by layer" });
    for (let k = 0; k <= 4; k++) {
      const v = lo + (hi - lo) * k / 4;
      plot.appendChild(svg("line", { x1: left, x2: Wp - right, y1: y(v), y2: y(v), stroke: "#e3e7ee" }));
      plot.appendChild(svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#5b6475" },
                           v.toFixed(2)));
    }
    for (let i = 0; i < n; i++) {
      plot.appendChild(svg("text", { x: x(i), y: Hp - bottom + 16, "text-anchor": "middle", "font-size": 11,
                                     fill: "#5b6475" }, afterLayer(i)));
    }
    plot.appendChild(svg("text", { x: (left + Wp - right) / 2, y: Hp - 4, "text-anchor": "middle", "font-size": 12,
                                   fill: "#5b6475" }, "after layer"));
    const mid = top + (Hp - top - bottom) / 2;
    plot.appendChild(svg("text", { x: 12, y: mid, "text-anchor": "middle", "font-size": 12, fill: "#5b6475",
                                   transform: "rotate(-90 12 " + mid + ")" }, "cosine"));
    const legend = el("div", { class: "legend" });
    series.forEach(function (s, k) {
      const colour = s.dashed ? "#868e96" : PALETTE[k % PALETTE.length];
      const pts = [];
      s.values.forEach(function (v, i) { if (v !== null) pts.push(x(i).toFixed(1) + "," + y(v).toFixed(1)); });
      const line = svg("polyline", { class: "sense-line", "data-sense": s.name, points: pts.join(" "), fill: "none",
                                     stroke: colour, "stroke-width": 2.5 });
      if (s.dashed) line.setAttribute("stroke-dasharray", "6 4");
      plot.appendChild(line);
      s.values.forEach(function (v, i) {
        if (v === null) return;
        const dot = svg("circle", { cx: x(i), cy: y(v), r: 3.5, fill: colour });
        const where = i === 0 ? "embeddings" : "after layer " + (i - 1);
        dot.appendChild(svg("title", null, visible(s.name) + ", " + where + ": " + fmt(v, 3)));
        plot.appendChild(dot);
      });
      const item = el("span");
      item.appendChild(el("span", { class: "swatch", style: "background:" + colour }));
      item.appendChild(document.createTextNode(visible(s.name)));
      legend.appendChild(item);
    });
    box.appendChild(legend);
    box.appendChild(plot);
    if (S.predicted) {
      box.appendChild(el("p", { class: "caption" }, "Nearest sense by layer: " + S.predicted.map(function (p, i) {
        return afterLayer(i) + " " + visible(p); }).join(" · ")));
    }
    if (S.contrast_sentence) {
      box.appendChild(el("p", { class: "caption", id: "contrast-caption" }, "Contrast sentence: “" +
        visible(S.contrast_sentence) + "”" + (S.contrast_reason ? " (" + visible(S.contrast_reason) + ")" : "")));
    }
  })();

  // ---- 6. rollout and flow ----
  (function () {
    const table = document.getElementById("rollout-table");
    const roll = R.rollout || [], flow = R.flow;
    table.appendChild(row([th("token", "text"), th("rollout"), th("", "text"),
                           th(flow ? "flow" : "flow (too long to compute)"), th("", "text")]));
    const fr = Math.max(maxOf(roll), flow ? maxOf(flow) : 0), ff = fr;  // one scale for both bars
    // A long input: its words by exact rollout, largest first, the top ones shown; else in sentence order.
    const ranked = W > LONG && R.rollout_order;
    const words = ranked ? R.rollout_order : roll.map(function (_, j) { return j; });
    const rows = words.map(function (j) {
      const b1 = td(null, "barcell"); b1.appendChild(bar(roll[j], fr));
      const b2 = td(null, "barcell"); if (flow) b2.appendChild(bar(flow[j], ff, true));
      const label = ranked ? tokenLabel(j) + " (" + j + ")" : tokenLabel(j);  // out of sentence order: its place
      return row([td(label, "text"), td(fmt(roll[j], 3), "num"), b1,
                  td(flow ? fmt(flow[j], 3) : "–", "num"), b2], j === FOCUS ? "hl" : null);
    });
    if (ranked) {
      table.parentElement.insertBefore(el("p", { class: "columns-note" }, "Rows: the " + W + " words by rollout, " +
        "largest first."), table);
      limitRows(table, rows, function (k) { return k < TOP_ROWS; },
                "words, each with rollout at most " + atMost(roll[R.rollout_order[TOP_ROWS]]));
    } else {
      rows.forEach(function (r) { table.appendChild(r); });
    }
    let after = table.parentNode;
    for (const note of R.flat_notes || []) {  // near-even shares: say they single out no word
      const caption = el("p", { class: "caption flat-note" }, note + ".");
      after.after(caption);
      after = caption;
    }
    const last = R.last_layer;
    if (last) {
      document.getElementById("last-layer").textContent = "Last layer, mean of heads: " + pct(last.parked_share) +
        " of the focus word's attention goes to " + SET_ASIDE + "; among the rest it looks most at " +
        (last.top_content || []).map(function (t) {
          return "“" + visible(t.token) + "” " + fmt(t.weight, 3);
        }).join(", ") + "." + (last.ranked ? " In all, it looks most at " +
        rankedItems(last.ranked, FOCUS, 4).join(", ") + "." : "");
    }
  })();

  // ---- 7. ablation and roles ----
  const gridCells = [];
  function grid(tableId, values, full, name, digits) {
    const table = document.getElementById(tableId);
    table.replaceChildren();
    const header = [el("th")];
    for (let h = 0; h < H; h++) header.push(el("th", { scope: "col" }, h));
    table.appendChild(row(header));
    for (let l = 0; l < L; l++) {
      const cells = [el("th", { scope: "row" }, "L" + l)];
      for (let h = 0; h < H; h++) {
        const v = values[l][h];
        const c = el("td", { "data-layer": l, "data-head": h, "data-value": fmt(v, 4),
                             title: name + ", layer " + l + ", head " + h + ": " + fmt(v, 4) }, fmt(v, digits));
        paint(c, full > 0 ? v / full : 0);
        c.addEventListener("click", function () { select(l, h); });
        gridCells.push(c);
        cells.push(c);
      }
      table.appendChild(row(cells));
    }
  }
  function markGrids() {
    for (const c of gridCells) {
      if (!c.isConnected) continue;
      c.classList.toggle("sel", Number(c.getAttribute("data-layer")) === state.layer &&
                                Number(c.getAttribute("data-head")) === state.head);
    }
  }
  let ablMax = 0;
  for (const r of R.ablation) ablMax = Math.max(ablMax, maxOf(r));
  grid("ablation-grid", R.ablation.map(function (r) { return r.map(function (v) { return v * IMPORTANCE; }); }),
       ablMax * IMPORTANCE, "importance, (1 − cos) × 1000", 1);
  const roleSelect = document.getElementById("role-select");
  const roles = Object.keys(R.head_roles || {});
  for (const name of roles) roleSelect.appendChild(el("option", { value: name }, (R.role_names || {})[name] || name));
  function drawRoles() {
    if (!roles.length) return;
    grid("roles-grid", R.head_roles[state.role], 1, state.role, 2);
    markGrids();
  }
  if (roles.length) {
    state.role = roles.indexOf("previous") >= 0 ? "previous" : roles[0];
    roleSelect.value = state.role;
  }
  roleSelect.addEventListener("change", function () { state.role = roleSelect.value; drawRoles(); });
  drawRoles();

  // ---- 8. initial vectors ----
  (function () {
    const iv = R.initial_vectors;
    const table = document.getElementById("vectors-table");
    if (!iv) return;
    const dims = (iv.first_dims && iv.first_dims[0]) ? iv.first_dims[0].length : 0;
    const header = [th("token", "text"), th("norm"), th("", "text")];
    for (let d = 0; d < dims; d++) header.push(th("x" + d));
    table.appendChild(row(header));
    const full = maxOf(iv.norm);
    const rows = [];
    for (let j = 0; j < W; j++) {
      const b = td(null, "barcell"); b.appendChild(bar(iv.norm[j], full));
      const cells = [td(tokenLabel(j), "text"), td(fmt(iv.norm[j], 2), "num"), b];
      for (let d = 0; d < dims; d++) cells.push(td(fmt(iv.first_dims[j][d], 2), "num"));
      rows.push(row(cells, j === FOCUS ? "hl" : null));
    }
    // A long input: the words around the focus word first, the rest behind a button.
    const start = Math.max(0, Math.min(FOCUS - Math.floor(TOP_ROWS / 2), W - TOP_ROWS));
    limitRows(table, rows, function (k) { return W <= LONG || (k >= start && k < start + TOP_ROWS); },
              "words (these are the " + TOP_ROWS + " around the focus word)");
  })();

  // ---- 9. every layer and head at once (the model view) ----
  (function () {
    const box = document.getElementById("model-view");
    if (!hasMatrices) {  // a long input: no (W, W) matrices, as section 2 says
      document.getElementById("model-view-section").hidden = true;
      return;
    }
    const all = function (n) { return Array.from({ length: n }, function (_, i) { return i; }); };
    modelView = QKVViews.modelView(box, { tokens: R.tokens, focus: FOCUS, layers: all(L), heads: all(H),
                                          attention: R.attention }, { onSelect: select });
  })();

  select(state.layer, state.head);
  markScrollable();
  document.body.setAttribute("data-ready", "true");
})();
