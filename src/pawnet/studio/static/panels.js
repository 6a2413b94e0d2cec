"use strict";
// pawnet studio: the panels over the grid: retraining (the two runs' figures side by side)
// and "how many more photos?" (learning curves per class, drawn as SVG). Loaded before
// studio.js, whose helpers ($, api, el, toast, view) these call.

// --- retraining and growth -------------------------------------------------------------
async function retrain() {
  if ($("retrain").disabled) return;
  if (view.state && !view.state.fast_retrain) toast("this model trains from its photos again: minutes, not seconds");
  try {
    await api("/api/retrain", {});
    $("retrain").disabled = true;
    $("retrain").textContent = "Retraining…";
    view.retrainClicked = performance.now();
  } catch (error) { toast(error.message); }
}

function showRetrained(result) {
  const box = $("retrain-result");
  box.replaceChildren(el("h2", "", `Retrained in ${result.seconds.toFixed(1)} s`));
  const table = el("table"), head = el("tr");
  head.append(el("th", "", ""), ...result.runs.map((r) => el("th", "", r.split("/").pop())));
  table.appendChild(head);
  const rows = Object.entries(result.settings).concat(Object.entries(result.metrics));
  for (const [key, values] of rows) {
    const tr = el("tr");
    tr.appendChild(el("td", "", key));
    values.forEach((v, i) => {
      const td = el("td", "", cellText(key, v));
      if (i > 0 && typeof v === "number" && typeof values[0] === "number" && v !== values[0]) {
        const better = key.endsWith("loss") || key === "wall_s" ? v < values[0] : v > values[0];
        td.className = better ? "better" : "worse";
      }
      tr.appendChild(td);
    });
    table.appendChild(tr);
  }
  box.appendChild(table);
  box.appendChild(el("p", "hint", "Validation figures of the run before and of the new one; photos relabelled in validation change what is measured."));
  box.hidden = false; $("growth").hidden = true; $("panel").hidden = false;
}

function cellText(key, v) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : key === "wall_s" ? v.toFixed(1) : v.toFixed(4);
  const text = Array.isArray(v) ? v.join(",") : String(v);
  if (key === "data_fingerprint") return text.slice(0, 12);
  return text.includes("/") ? text.split("/").pop() : text;
}

async function showGrowth() {
  const box = $("growth");
  box.replaceChildren(el("h2", "", "How many more photos?"));
  box.hidden = false; $("retrain-result").hidden = true; $("panel").hidden = false;
  const data = await api("/api/growth");
  if (!data.curves) {
    box.appendChild(el("p", "hint", data.status.note || data.status.error || `being measured (${data.status.state})…`));
    return;
  }
  const c = data.curves;
  box.appendChild(el("p", "advice", c.advice.text));
  box.appendChild(chart(c));
  box.appendChild(el("p", "hint", "Recall on the validation photos of each class against the training photos used (the head refitted on subsets of the cached features)."));
}

function chart(c) {
  const NS = "http://www.w3.org/2000/svg", W = 600, H = 300, L = 50, B = 40;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.id = "growth-chart";
  const all = c.classes.flatMap((k) => c.train_photos[k]).filter((n) => n > 0);
  const recalls = c.classes.flatMap((k) => c.recall[k]).filter((r) => r !== null);
  const loN = Math.log(Math.min(...all) / 1.2), hiN = Math.log(Math.max(...all) * 1.2);
  const minR = Math.max(0, Math.floor((Math.min(...recalls) - 0.02) * 50) / 50);
  const x = (n) => L + (W - L - 20) * (Math.log(n) - loN) / (hiN - loN || 1);
  const y = (r) => 10 + (H - B - 10) * (1 - (r - minR) / (1 - minR || 1));
  const colours = ["#2a5db0", "#b03a2a", "#1a7f37", "#8a4fbf", "#c07a00", "#555"];
  const line = (x1, y1, x2, y2, colour) => {
    const l = document.createElementNS(NS, "line");
    Object.entries({ x1, y1, x2, y2, stroke: colour }).forEach(([k, v]) => l.setAttribute(k, v));
    svg.appendChild(l);
  };
  const text = (tx, ty, s, colour) => {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", tx); t.setAttribute("y", ty); if (colour) t.style.fill = colour;
    t.textContent = s; svg.appendChild(t);
  };
  line(L, H - B, W - 10, H - B, "#999"); line(L, 10, L, H - B, "#999");
  for (const r of [minR, (minR + 1) / 2, 1]) text(4, y(r) + 4, `${(r * 100).toFixed(1)}%`);
  text(W / 2 - 60, H - 8, "training photos of the class (log scale)");
  c.classes.forEach((k, i) => {
    const colour = colours[i % colours.length], ns = c.train_photos[k], rs = c.recall[k];
    if (rs.includes(null) || ns.includes(0)) return;
    for (let j = 1; j < ns.length; j++) line(x(ns[j - 1]), y(rs[j - 1]), x(ns[j]), y(rs[j]), colour);
    ns.forEach((n, j) => {
      const dot = document.createElementNS(NS, "circle");
      Object.entries({ cx: x(n), cy: y(rs[j]), r: 3, fill: colour }).forEach(([a, v]) => dot.setAttribute(a, v));
      svg.appendChild(dot);
      if (i === 0) text(x(n) - 10, H - B + 14, String(n));
    });
    text(L + 12, 24 + 16 * i, `${k}: ${(rs[rs.length - 1] * 100).toFixed(1)}% with ${ns[ns.length - 1]} photos`, colour);
  });
  return svg;
}
