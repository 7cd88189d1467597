// nearest-prompt's page: plain JS, no build step. Talks to /query, /predict and /interrogate of the same server.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { lastImage: null, lastText: null, rows: 100, search: null };
const PREDICT_K = 100;  // neighbours blended for the confidence, as `nearest-prompt predict` does
const COMPOSE_K = 10;  // neighbours blended into the composer's target, as `nearest-prompt interrogate` does

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const token = $("token").value.trim() || localStorage.getItem("np-token") || "";
  if (token) { h["Authorization"] = "Bearer " + token; localStorage.setItem("np-token", token); }
  return h;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// Each search (an image, or a text) gets its own AbortController: starting a new one aborts the requests
// of the one before, and a search shows its answers only while it is still the current one, so an answer
// of an earlier search never replaces a later one.
function newSearch() {
  if (state.search) state.search.abort();
  state.search = new AbortController();
  return state.search;
}

function current(search) { return state.search === search && !search.signal.aborted; }

async function post(path, body, search) {
  const res = await fetch(path, { method: "POST", headers: headers(!(body instanceof FormData)), signal: search.signal,
                                  body: body instanceof FormData ? body : JSON.stringify(body) });
  let data = null;
  try { data = await res.json(); } catch (e) { /* not JSON */ }
  if (res.status === 401) {
    $("token-box").open = true;
    throw new Error("this server needs a token: enter it in the token box, then search again");
  }
  if (!res.ok) throw new Error((data && data.error) || ("the server answered " + res.status));
  return data;
}

function failed(e, search) {
  if (e.name === "AbortError" || !current(search)) return;  // replaced by a newer search: nothing to say
  $("results").replaceChildren();
  setStatus(e.message, true);
}

function k() { return parseInt($("k").value, 10); }

function show(neighbors, note) {
  const list = $("results");
  list.replaceChildren();
  $("note").hidden = !note;
  $("note").textContent = note ? "Note: " + note : "";
  for (const n of neighbors) {
    const li = document.createElement("li");
    const p = document.createElement("p");
    p.className = "prompt";
    p.textContent = n.prompt;
    const meta = document.createElement("div");
    meta.className = "meta";
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = Math.max(0, Math.min(1, n.score)) * 100 + "%";
    bar.appendChild(fill);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = n.score.toFixed(4);
    const copy = document.createElement("button");
    copy.className = "copy";
    copy.type = "button";
    copy.textContent = "copy";
    copy.addEventListener("click", () => copyText(n.prompt, copy));
    meta.append(bar, score, copy);
    li.append(p, meta);
    list.appendChild(li);
  }
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {  // no clipboard permission: the old way
    const area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "copied";
  setTimeout(() => { button.textContent = "copy"; }, 1500);
}

async function searchImage(file) {
  if (!file) return;
  if (!file.type.startsWith("image/") && file.type !== "") {
    setStatus(`${file.name || "that file"} is not an image (${file.type}); pick a PNG, JPEG or WebP file`, true);
    return;
  }
  const search = newSearch();
  state.lastImage = file; state.lastText = null;
  const url = URL.createObjectURL(file);
  $("preview").src = url; $("preview").hidden = false;
  setStatus("searching…");
  $("confidence").hidden = true;
  $("composed").hidden = true;
  try {
    const q = new FormData(); q.append("image", file); q.append("k", String(k()));
    const p = new FormData(); p.append("image", file); p.append("k", String(Math.min(PREDICT_K, state.rows)));
    const [res, pred] = await Promise.all([post("/query", q, search), post("/predict", p, search)]);
    if (!current(search)) return;
    show(res.neighbors, res.note);
    const r = pred.results[0];
    $("confidence").textContent = `Prediction confidence ${r.confidence.toFixed(3)} (how much the neighbours agree; ` +
      `best similarity ${r.top_score === null ? "–" : r.top_score.toFixed(3)})`;
    $("confidence").hidden = false;
    setStatus(`${res.neighbors.length} nearest prompts; composing a prompt…`);
    const c = new FormData(); c.append("image", file); c.append("k", String(Math.min(COMPOSE_K, state.rows)));
    const composed = await post("/interrogate", c, search);
    if (!current(search)) return;
    showComposed(composed);
    setStatus(`${res.neighbors.length} nearest prompts, and a composed one`);
  } catch (e) {
    failed(e, search);
  }
}

function showComposed(c) {
  $("composed-prompt").textContent = c.prompt;
  const sim = c.clip_similarity === null ? "–" : c.clip_similarity.toFixed(3);
  $("composed-meta").textContent = `${c.components.length} parts, ${c.tokens} tokens, CLIP similarity ${sim}`;
  $("composed").hidden = false;
}

async function searchText(text) {
  if (!text.trim()) { setStatus("type a text to search for", true); return; }
  const search = newSearch();
  state.lastText = text; state.lastImage = null;
  $("preview").hidden = true; $("confidence").hidden = true; $("composed").hidden = true;
  setStatus("searching…");
  try {
    const res = await post("/query", { text: text, k: k() }, search);
    if (!current(search)) return;
    show(res.neighbors, res.note);
    setStatus(`${res.neighbors.length} nearest prompts`);
  } catch (e) {
    failed(e, search);
  }
}

$("file").addEventListener("change", (e) => searchImage(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); searchImage(e.dataTransfer.files[0]); });
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData || {}).items || []].find((i) => i.kind === "file");
  if (item) searchImage(item.getAsFile());
});
$("text-form").addEventListener("submit", (e) => { e.preventDefault(); searchText($("text").value); });
$("k").addEventListener("input", () => { $("k-out").textContent = $("k").value; });
$("k").addEventListener("change", () => {
  if (state.lastImage) searchImage(state.lastImage); else if (state.lastText) searchText(state.lastText);
});
$("composed-copy").addEventListener("click", () => copyText($("composed-prompt").textContent, $("composed-copy")));
$("token").value = localStorage.getItem("np-token") || "";
fetch("/health").then((r) => r.json()).then((h) => {
  state.rows = h.rows;
  $("k").max = String(Math.min(50, h.rows));
  if (h.token_required && !$("token").value) {  // ask for it up front, not after a refusal
    $("token-box").open = true;
    setStatus("this server needs a token: enter it in the token box");
  }
}).catch(() => setStatus("the server does not answer", true));
