// The live page: fetches the server's aggregated tree and draws it as an icicle (root on top,
// callees below), with zoom, search, a service filter, a time range and a top-functions table.
// Every frame is a <div> whose name is set as text (never parsed as HTML), so names are
// selectable, found by the browser's own search, read by screen readers, and escaped.
"use strict";

const ROW = 18;          // pixels per stack level
const MIN_PX = 0.5;      // frames narrower than this are not drawn (nor their callees)
const $ = (id) => document.getElementById(id);

const state = {
  tree: null,            // [name, total, self, children]
  focus: [],             // names from the root's child to the zoomed frame
  interval: 10000,
  timer: null,
};
// For the tests and the benchmark: how long the last render and search took.
// `first_ms`: from the navigation to the end of the first drawing (the page, its requests, the
// server's aggregation and the drawing).
window.profilerTimings = { render_ms: 0, search_ms: 0, renders: 0, first_ms: 0 };

function query() {
  const p = new URLSearchParams();
  p.set("minutes", $("minutes").value);
  if ($("service").value) p.set("service", $("service").value);
  return p.toString();
}

function pct(part, whole) {
  return whole > 0 ? (100 * part / whole).toFixed(2) + "%" : "0%";
}

// The path of nodes from the root to the focused frame (as far as it still exists).
function focusChain() {
  const chain = [state.tree];
  for (const name of state.focus) {
    const next = chain[chain.length - 1][3].find((c) => c[0] === name);
    if (!next) break;
    chain.push(next);
  }
  return chain;
}

function frameClass(node, depth) {
  if (depth === 0) return "root";
  if (depth === 1) return "process";
  return node[0].endsWith("_[k]") ? "kernel" : "user";
}

function makeFrame(node, depth, left, width, view, path) {
  const el = document.createElement("div");
  el.className = "frame " + frameClass(node, depth);
  el.style.left = left + "%";
  el.style.width = width + "%";
  el.style.top = depth * ROW + "px";
  el.textContent = node[0];
  const label = `${node[0]}: ${node[1]} samples (${pct(node[1], view)}), self ${node[2]}`;
  el.title = label;
  el.setAttribute("role", "treeitem");
  el.setAttribute("aria-label", label);
  el.setAttribute("aria-level", String(depth + 1));
  el.tabIndex = 0;
  el.dataset.name = node[0];
  el.dataset.total = String(node[1]);
  el.path = path;
  return el;
}

function render() {
  const t0 = performance.now();
  const graph = $("graph");
  const frag = document.createDocumentFragment();
  const chain = focusChain();
  const focus = chain[chain.length - 1];
  const view = focus[1];
  const px = graph.clientWidth || 1200;
  let maxDepth = 0;
  // The focused frame's ancestors, full width.
  chain.forEach((node, depth) => {
    const path = chain.slice(1, depth + 1).map((n) => n[0]);
    frag.appendChild(makeFrame(node, depth, 0, 100, view, path));
    maxDepth = Math.max(maxDepth, depth);
  });
  // Its callees, in proportion (an explicit stack: deep graphs must not overflow the JS stack).
  const base = chain.length - 1;
  const todo = [[focus, base, 0, state.focus.slice()]];
  while (todo.length) {
    const [node, depth, left, path] = todo.pop();
    let x = left;
    for (const child of node[3]) {
      const width = view > 0 ? (100 * child[1]) / view : 0;
      if ((width / 100) * px >= MIN_PX) {
        const childPath = path.concat([child[0]]);
        frag.appendChild(makeFrame(child, depth + 1, x, width, view, childPath));
        maxDepth = Math.max(maxDepth, depth + 1);
        todo.push([child, depth + 1, x, childPath]);
      }
      x += width;
    }
  }
  graph.replaceChildren(frag);
  graph.style.height = (maxDepth + 1) * ROW + "px";
  applySearch();
  window.profilerTimings.render_ms = performance.now() - t0;
  window.profilerTimings.renders += 1;
  if (window.profilerTimings.renders === 1) window.profilerTimings.first_ms = performance.now();
}

// Highlights the drawn frames whose name contains the search text, and shows their share of
// the view (each matching frame counted once, not again under a matching caller).
function applySearch() {
  const t0 = performance.now();
  const term = $("search").value.trim().toLowerCase();
  const frames = $("graph").children;
  for (const el of frames) {
    const hit = term !== "" && el.dataset.name.toLowerCase().includes(term);
    el.classList.toggle("match", hit);
    el.classList.toggle("dim", term !== "" && !hit);
  }
  if (term === "" || !state.tree) {
    $("match").textContent = "";
  } else {
    const chain = focusChain();
    const focus = chain[chain.length - 1];
    let matched = 0;
    const todo = [focus];
    while (todo.length) {
      const node = todo.pop();
      if (node[0].toLowerCase().includes(term)) {
        matched += node[1];
      } else {
        for (const c of node[3]) todo.push(c);
      }
    }
    $("match").textContent = `"${term}": ${pct(matched, focus[1])} of the view (${matched} samples)`;
  }
  window.profilerTimings.search_ms = performance.now() - t0;
}

function zoomTo(path) {
  state.focus = path;
  render();
}

function fillTop(rows, total) {
  const body = $("top");
  const frag = document.createDocumentFragment();
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const [text, numeric] of [
      [r.name, false], [r.self, true], [pct(r.self, total), true],
      [r.total, true], [pct(r.total, total), true],
    ]) {
      const td = document.createElement("td");
      td.textContent = String(text);
      if (numeric) td.className = "n";
      tr.appendChild(td);
    }
    frag.appendChild(tr);
  }
  body.replaceChildren(frag);
}

function fillServices(services) {
  const select = $("service");
  const chosen = select.value;
  const frag = document.createDocumentFragment();
  const all = document.createElement("option");
  all.value = "";
  all.textContent = "every service";
  frag.appendChild(all);
  for (const s of services) {
    const o = document.createElement("option");
    o.value = s.name;
    o.textContent = `${s.name} (${s.samples})`;
    frag.appendChild(o);
  }
  select.replaceChildren(frag);
  select.value = services.some((s) => s.name === chosen) ? chosen : "";
}

async function refresh() {
  try {
    const q = query();
    const [graph, top, services] = await Promise.all([
      fetch("api/flamegraph?" + q).then((r) => r.json()),
      fetch("api/top?" + q).then((r) => r.json()),
      fetch("api/services?minutes=" + $("minutes").value).then((r) => r.json()),
    ]);
    state.tree = graph.tree;
    state.interval = Math.max(1000, graph.interval_ms || 10000);
    fillServices(services.services);
    render();
    fillTop(top.rows, graph.total);
    for (const [id, file] of [["dl-pprof", "profile.pb.gz"], ["dl-folded", "profile.folded"], ["dl-svg", "profile.svg"]]) {
      $(id).href = `download/${file}?${q}`;
    }
    const when = new Date().toLocaleTimeString();
    $("status").textContent = graph.total > 0
      ? `${graph.total} samples in ${graph.windows} windows; updated ${when}`
      : `no samples yet (a window closes every ${state.interval / 1000} s); updated ${when}`;
  } catch (err) {
    $("status").textContent = "cannot reach the profiler: " + err;
  }
  clearTimeout(state.timer);
  state.timer = setTimeout(refresh, state.interval);
}

function start() {
  $("graph").addEventListener("click", (ev) => {
    const el = ev.target.closest(".frame");
    if (el && el.path) zoomTo(el.path);
  });
  $("graph").addEventListener("keydown", (ev) => {
    const el = ev.target.closest(".frame");
    if (el && el.path && (ev.key === "Enter" || ev.key === " ")) {
      ev.preventDefault();
      zoomTo(el.path);
    }
  });
  $("reset").addEventListener("click", () => zoomTo([]));
  $("search").addEventListener("input", applySearch);
  $("minutes").addEventListener("change", refresh);
  $("service").addEventListener("change", () => { state.focus = []; refresh(); });
  window.addEventListener("resize", () => state.tree && render());
  refresh();
}

start();
