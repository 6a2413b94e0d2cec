"use strict";
// pawnet studio: a virtual grid (only the rows in view exist, so only a screenful of
// thumbnails is ever asked for), keyboard decisions, retraining and learning curves.
// Names from the folder are shown with textContent only, never parsed as HTML.

const CELL_W = 180, CELL_H = 220, PAGE = 200;
const $ = (id) => document.getElementById(id);
const view = { total: 0, pages: new Map(), selected: 0, state: null, detailId: null,
               query: "", jobsSeen: "", retrainSeen: null };

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || response.statusText);
  return data;
}

function toast(text) {
  const t = $("toast");
  t.textContent = text; t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 2500);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// --- state and filters -----------------------------------------------------------------
function filterQuery() {
  const params = new URLSearchParams();
  for (const [key, id] of [["label", "f-label"], ["split", "f-split"], ["issue", "f-issue"],
                           ["answer", "f-answer"], ["decided", "f-decided"], ["q", "q"]]) {
    if ($(id).value) params.set(key, $(id).value);
  }
  params.set("order", $("order").value);
  return params.toString();
}

function reload(keepSelection) {
  view.query = filterQuery();
  view.pages.clear();
  if (!keepSelection) { view.selected = 0; view.selectedId = null; $("grid").scrollTop = 0; }
  return fetchPage(Math.floor(view.selected / PAGE)).then(refind).then(render);
}

// After a reload the selected photo may have moved (another order, or photos decided out of
// the filter): keep the selection on the same photo when it is still on the loaded page.
function refind() {
  if (view.selectedId === null || view.selectedId === undefined) return;
  for (const [n, page] of view.pages) {
    if (!Array.isArray(page)) continue;
    const at = page.findIndex((p) => p.id === view.selectedId);
    if (at >= 0) { view.selected = n * PAGE + at; return; }
  }
}

async function fetchPage(n) {
  if (view.pages.has(n)) return view.pages.get(n);
  const query = view.query;
  const promise = api(`/api/photos?${query}&offset=${n * PAGE}&limit=${PAGE}`).then((data) => {
    if (query !== view.query) return null;
    view.total = data.total;
    $("total").textContent = `${data.total.toLocaleString()} photos`;
    view.pages.set(n, data.items);
    return data.items;
  }, (error) => {
    if (view.pages.get(n) === promise) view.pages.delete(n);  // asked again when next needed
    toast(error.message);
    return null;
  });
  view.pages.set(n, promise);
  return promise;
}

function itemAt(index) {
  const page = view.pages.get(Math.floor(index / PAGE));
  return Array.isArray(page) ? page[index % PAGE] : undefined;
}

function replaceItem(item) {
  for (const page of view.pages.values()) {
    if (!Array.isArray(page)) continue;
    const at = page.findIndex((p) => p.id === item.id);
    if (at >= 0) page[at] = item;
  }
}

// --- the grid --------------------------------------------------------------------------
function columns() { return Math.max(1, Math.floor($("grid").clientWidth / CELL_W)); }

function render() {
  const grid = $("grid"), inner = $("grid-inner"), cols = columns();
  const rows = Math.ceil(view.total / cols);
  inner.style.height = `${rows * CELL_H}px`;
  const first = Math.max(0, Math.floor(grid.scrollTop / CELL_H) - 1);
  const last = Math.min(rows, Math.ceil((grid.scrollTop + grid.clientHeight) / CELL_H) + 1);
  const wanted = new Set();
  for (let i = first * cols; i < Math.min(view.total, last * cols); i++) wanted.add(i);
  for (const cell of [...inner.children]) {
    if (!wanted.has(Number(cell.dataset.index))) cell.remove();
  }
  const present = new Map([...inner.children].map((c) => [Number(c.dataset.index), c]));
  for (const index of wanted) {
    const item = itemAt(index);
    if (item === undefined) { fetchPage(Math.floor(index / PAGE)).then((p) => p && render()); continue; }
    const old = present.get(index);
    const cell = old && old.dataset.sig === signature(item) ? old : drawCell(item, index);
    cell.classList.toggle("selected", index === view.selected);
    cell.style.left = `${(index % cols) * CELL_W}px`;
    cell.style.top = `${Math.floor(index / cols) * CELL_H}px`;
    if (!old) inner.appendChild(cell); else if (old !== cell) old.replaceWith(cell);
  }
}

function signature(item) { return JSON.stringify([item.id, item.label, item.decision, item.answer, item.issues]); }

function drawCell(item, index) {
  const cell = el("div", "cell");
  cell.dataset.index = index;
  cell.dataset.id = item.id;
  cell.dataset.sig = signature(item);
  cell.classList.toggle("selected", index === view.selected);
  cell.classList.toggle("excluded", item.label === "exclude");
  const box = el("div", "thumb"), img = el("img");
  img.loading = "lazy"; img.alt = ""; img.src = `/api/photos/${item.id}/thumb`;
  box.appendChild(img); cell.appendChild(box);
  cell.appendChild(el("div", "name", item.name));
  const badges = el("div");
  const shown = item.label || "no class";
  badges.appendChild(el("span", `badge label ${item.decision ? "decided" : ""} ${item.label === "exclude" ? "exclude" : ""}`, shown));
  if (item.answer && !item.answer.error) {
    const a = item.answer, text = a.label + (a.confidence != null ? ` ${Math.round(a.confidence * 100)}%` : "");
    const badge = el("span", `badge answer ${a.label !== item.label ? "disagrees" : ""}`, text);
    badge.title = a.reason ? `${a.label}: ${a.reason}` : `the model says ${a.label}`;
    badges.appendChild(badge);
  }
  for (const issue of item.issues) badges.appendChild(el("span", "badge issue", issue));
  if (item.queue) badges.appendChild(el("span", "badge", `#${item.queue}`));
  cell.appendChild(badges);
  cell.addEventListener("click", () => select(index, true));
  cell.addEventListener("dblclick", () => openDetail());
  return cell;
}

function select(index, fromClick) {
  if (view.total === 0) return;
  view.selected = Math.max(0, Math.min(view.total - 1, index));
  const item = itemAt(view.selected);
  view.selectedId = item ? item.id : null;
  const cols = columns(), grid = $("grid");
  const top = Math.floor(view.selected / cols) * CELL_H;
  if (!fromClick) {
    if (top < grid.scrollTop) grid.scrollTop = top;
    else if (top + CELL_H > grid.scrollTop + grid.clientHeight) grid.scrollTop = top + CELL_H - grid.clientHeight;
  }
  render();
  if (!$("detail").hidden) openDetail();
}

// --- decisions -------------------------------------------------------------------------
async function decide(label) {
  const item = itemAt(view.selected);  // the photo selected when the key was pressed
  if (!item) return;
  select(view.selected + 1);  // at once: the next key is about the next photo
  try {
    const updated = await api(`/api/photos/${item.id}/label`, { label });
    replaceItem(updated);
    render();
    toast(`${updated.name}: ${label === null ? "back to its folder's label" : label}`);
  } catch (error) { toast(error.message); }
}

async function undo() {
  try {
    const { undone } = await api("/api/undo", {});
    if (!undone) { toast("nothing to undo"); return; }
    replaceItem(undone);
    render();
    toast(`undone: ${undone.name}`);
  } catch (error) { toast(error.message); }
}

// --- the detail view -------------------------------------------------------------------
async function openDetail() {
  const item = itemAt(view.selected);
  if (!item) return;
  view.detailId = item.id;
  const d = await api(`/api/photos/${item.id}`);
  if (view.detailId !== d.id) return;
  $("detail").hidden = false;
  $("detail-img").src = `/api/photos/${d.id}/image`;
  showPhoto();
  $("detail-name").textContent = d.name;
  $("detail-label").textContent = `label ${d.label || "none"}${d.decision ? " (your decision; folder: " + (d.folder_label || "none") + ")" : ""} · split ${d.split || "-"}`;
  const answer = $("detail-answer");
  answer.replaceChildren();
  if (d.answer && d.answer.error) answer.appendChild(el("p", "", `unreadable: ${d.answer.error}`));
  else if (d.answer) {
    answer.appendChild(el("p", "", `model: ${d.answer.label}${d.answer.reason ? " (" + d.answer.reason + ")" : ""}`));
    for (const [name, p] of Object.entries(d.answer.probabilities || {})) {
      const bar = el("div", "bar"), fill = el("span", "fill");
      fill.style.width = `${Math.round(p * 200)}px`;
      bar.append(el("span", "", name), fill, el("span", "", `${(p * 100).toFixed(1)}%`));
      answer.appendChild(bar);
    }
  } else answer.appendChild(el("p", "hint", view.state && view.state.run ? "answer not computed yet" : "no model: start with --run RUN"));
  const issues = $("detail-issues");
  issues.replaceChildren();
  for (const issue of d.issue_details || []) issues.appendChild(el("li", "", describeIssue(issue)));
  if (d.why) issues.appendChild(el("li", "", `in the queue at #${d.queue}: uncertainty ${d.why.uncertainty.toFixed(2)}, novelty ${d.why.novelty.toFixed(2)}`));
}

function describeIssue(issue) {
  if (issue.kind === "label") return `suspected label error: looks like ${issue.suggested}; a model trained without this photo gives its label ${((1 - issue.score) * 100).toFixed(1)}%`;
  if (issue.kind === "duplicate") return `near-duplicate of photo ${issue.with} (similarity ${issue.score.toFixed(3)}${issue.across_splits ? ", in another split" : ""})`;
  return `outlier: unlike the other photos (score ${issue.score.toFixed(2)})`;
}

function showPhoto() {
  $("explain-img").hidden = true;
  $("detail-img").hidden = false;
  $("explain").textContent = "Where did it look?";
}

async function explain() {
  const id = view.detailId;
  if (!$("explain-img").hidden) { showPhoto(); return; }
  $("explain").disabled = true;
  $("explain").textContent = "Looking…";
  try {
    const found = await api(`/api/photos/${id}/explain`);
    if (view.detailId !== id) return;
    $("explain-img").src = found.overlay;
    $("explain-img").hidden = false;
    $("detail-img").hidden = true;
    $("explain").disabled = false;
    $("explain").textContent = "Show the photo";
    const method = { "layer-cam": "Layer-CAM", "grad-cam": "Grad-CAM" }[found.method] || found.method;
    toast(`${method} heat-map for ${found.explained_class}, ${found.resolution.join("×")} cells, over the photo as the model sees it`);
  } catch (error) {
    toast(error.message);
    $("explain").disabled = false;
    $("explain").textContent = "Where did it look?";
  }
}

// --- polling the state -----------------------------------------------------------------
async function poll() {
  try {
    const s = await api("/api/state");
    const first = view.state === null;
    view.state = s;
    if (first) setUp(s);
    $("folder").textContent = `${s.folder} → ${s.labels_file}${s.run ? " · model " + s.run : ""}`;
    $("counts").textContent = Object.entries(s.counts.by_label).filter(([, n]) => n)
      .map(([k, n]) => `${k || "no class"} ${n}`).join(" · ") + ` · ${s.counts.decided} decided`;
    const jobs = Object.entries(s.jobs).filter(([, j]) => j.state !== "idle")
      .map(([k, j]) => `${k} ${j.state === "running" && j.total ? `${j.done}/${j.total}` : j.state}`);
    $("jobs").textContent = jobs.join(" · ");
    const states = JSON.stringify(Object.values(s.jobs).map((j) => j.state));
    view.polls = (view.polls || 0) + 1;
    const answering = s.jobs.answers.state === "running" && view.polls % 5 === 0;
    if (!first && (states !== view.jobsSeen || answering)) reload(true);
    view.jobsSeen = states;
    const busy = ["waiting", "running"].includes(s.jobs.retrain.state);
    $("retrain").disabled = busy || !s.run;
    $("retrain").textContent = busy ? "Retraining…" : "Retrain";
    $("retrain").title = s.fast_retrain ? "Train again with your decisions (seconds: the features are cached)" : "Train again with your decisions (this model trains from its photos: minutes)";
    if (s.retrained && s.retrained.runs.join() !== view.retrainSeen) {
      view.retrainSeen = s.retrained.runs.join();
      if (view.retrainClicked !== undefined) showRetrained(s.retrained);
    }
    if (s.jobs.retrain.state === "failed" && view.retrainClicked !== undefined) {
      toast(`retraining failed: ${s.jobs.retrain.error}`);
      view.retrainClicked = undefined;
    }
  } catch (error) { $("jobs").textContent = `studio unreachable: ${error.message}`; }
  setTimeout(poll, 1000);
}

function setUp(s) {
  const labels = $("f-label");
  for (const c of [...s.classes, "exclude", "none"]) {
    const o = el("option", "", c); o.value = c; labels.appendChild(o);
  }
  if (s.inbox) { $("order").value = "queue"; $("f-label").value = "none"; }
  const keys = $("help-keys"), hints = [];
  for (const [key, c] of Object.entries(s.keys)) {
    keys.append(el("dt", "", key), el("dd", "", `label ${c}`));
    hints.push(`${key} ${c}`);
  }
  for (const [key, what] of [["x", "exclude from training"], ["u", "undo the last decision"],
    ["0", "back to the folder's label"], ["← → ↑ ↓", "move"], ["Enter", "open the photo"],
    ["e", "where did it look?"], ["Esc", "close"], ["r", "retrain"], ["?", "these keys"]]) {
    keys.append(el("dt", "", key), el("dd", "", what));
  }
  $("detail-keys").textContent = `${hints.join(" · ")} · x exclude · u undo`;
  view.keys = s.keys;
  reload();
}

function onKey(event) {
  if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT" || event.ctrlKey || event.metaKey || event.altKey) return;
  const cols = columns(), key = event.key, keys = view.keys || {};
  const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols };
  if (key in moves) { select(view.selected + moves[key]); }
  else if (key in keys) { decide(keys[key]); }
  else if (key === "x") { decide("exclude"); }
  else if (key === "0") { decide(null); }
  else if (key === "u") { undo(); }
  else if (key === "Enter" || key === " ") { openDetail(); }
  else if (key === "e" && !$("detail").hidden) { explain(); }
  else if (key === "r") { retrain(); }
  else if (key === "?") { $("help").hidden = !$("help").hidden; }
  else if (key === "Escape") { $("detail").hidden = true; $("panel").hidden = true; $("help").hidden = true; }
  else return;
  event.preventDefault();
}

document.addEventListener("keydown", onKey);
$("grid").addEventListener("scroll", () => requestAnimationFrame(render));
window.addEventListener("resize", () => render());
for (const id of ["f-label", "f-split", "f-issue", "f-answer", "f-decided", "order"]) {
  $(id).addEventListener("change", () => { reload(); $("grid").focus(); });
}
$("q").addEventListener("input", () => { clearTimeout(view.typing); view.typing = setTimeout(() => reload(), 250); });
$("retrain").addEventListener("click", retrain);
$("growth-btn").addEventListener("click", showGrowth);
$("help-btn").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
$("close").addEventListener("click", () => { $("detail").hidden = true; });
new ResizeObserver(() => render()).observe($("grid"));
$("panel-close").addEventListener("click", () => { $("panel").hidden = true; });
$("explain").addEventListener("click", explain);
poll();
