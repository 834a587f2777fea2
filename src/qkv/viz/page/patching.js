"use strict";
(function () {
  const data = JSON.parse(document.getElementById("patching-data").textContent);
  const titles = {
    resid: "Residual stream entering each layer, patched one position at a time",
    z: "Each head's output (attn.z), patched at every position",
    weights: "Each head's attention weights, patched",
  };
  const text = (tag, content, cls) => {
    const node = document.createElement(tag);
    node.textContent = content;
    if (cls) node.className = cls;
    return node;
  };
  document.getElementById("pair").textContent =
    "Clean: \u201c" + data.clean.text + "\u201d \u2192 corrupted: \u201c" + data.corrupted.text + "\u201d";
  document.getElementById("metric").textContent = "Metric: " + data.metric + " \u2014 clean " +
    data.clean.metric.toFixed(4) + ", corrupted " + data.corrupted.metric.toFixed(4);
  document.getElementById("alignment").textContent = "Alignment: " + data.alignment_note;
  const tip = document.getElementById("tip");

  function colour(value) {  // blue toward the clean run, red away from it, white at 0
    const v = Math.max(-1, Math.min(1, value));
    const fade = Math.round(255 * (1 - Math.abs(v)));
    return v >= 0 ? `rgb(${fade},${fade},255)` : `rgb(255,${fade},${fade})`;
  }

  const main = document.getElementById("grids");
  for (const [site, grid] of Object.entries(data.sites)) {
    main.appendChild(text("h2", titles[site] || site));
    const box = document.createElement("div");
    box.className = "grid-box";
    const table = document.createElement("table");
    table.className = "grid";
    const head = table.createTHead().insertRow();
    head.appendChild(text("th", "layer"));
    const columns = site === "resid" ? data.corrupted.tokens : grid.restored[0].map((_, h) => "head " + h);
    for (const column of columns) head.appendChild(text("th", column, "col"));
    const body = table.createTBody();
    let best = null;
    grid.restored.forEach((row, layer) => {
      const tr = body.insertRow();
      tr.appendChild(text("th", String(layer)));
      row.forEach((value, col) => {
        const td = tr.insertCell();
        td.tabIndex = 0;
        if (value === null) {
          td.className = "none";
          td.textContent = "\u00b7";
          td.dataset.tip = `layer ${layer}, ${columns[col]}: no partner in the clean input, not patched`;
        } else {
          td.style.background = colour(value);
          td.style.color = Math.abs(value) > 0.6 ? "#fff" : "#000";
          td.textContent = value.toFixed(2);
          td.dataset.tip = `layer ${layer}, ${columns[col]}: restores ${value.toFixed(3)} of the clean effect ` +
            `(metric ${grid.metric[layer][col].toFixed(4)})`;
          if (best === null || value > best.value) best = {value, layer, col};
        }
        const show = () => { tip.textContent = td.dataset.tip; tip.style.display = "block"; };
        td.addEventListener("mouseenter", show);
        td.addEventListener("focus", show);
        td.addEventListener("mouseleave", () => { tip.style.display = "none"; });
        td.addEventListener("blur", () => { tip.style.display = "none"; });
      });
    });
    box.appendChild(table);
    main.appendChild(box);
    if (best !== null) {
      main.appendChild(text("p", `Most restored: layer ${best.layer}, ${columns[best.col]} ` +
        `(${best.value.toFixed(2)}).`, "top"));
    }
  }
})();
