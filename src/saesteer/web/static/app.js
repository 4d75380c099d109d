// saesteer web page: playground, sweep browser, feature pages. Vanilla JS, no build step, no CDN.
// Every text from the server is put in the page as text (textContent), never as HTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = {
  info: null,
  sweep: { results: 0, q: "", sort: "score", order: "desc", offset: 0, limit: 25, per_feature: false },
  sweepMetrics: [],
  feature: null,
  curve: null,
};
const SHOWN_METRICS = ["word_rank", "readback_rank", "fire_hits", "lens_hits", "fluency_drop", "repetition"];
const RANKED = ["steer", "score"]; // the browser's default order: saesteer top's (steer), else the sweep's score
const FEATURE_ROW_METRICS = ["steer", "score", "word_rank", "readback_rank"];

// ------------------------------------------------------------------------------------------ helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "cls") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function fmt(v, digits = 3) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  return Number(v.toPrecision(digits)).toString();
}

async function apiError(resp) {
  let msg = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (Array.isArray(body.detail)) {
      msg = body.detail.map((d) => {
        const loc = (d.loc || []).filter((x) => x !== "body" && x !== "query" && x !== "path").join(".");
        return (loc ? loc + ": " : "") + d.msg;
      }).join("; ");
    } else if (body.detail) {
      msg = body.detail;
    }
  } catch (e) { /* not JSON */ }
  const retry = resp.headers.get("Retry-After");
  if (resp.status === 503 && retry) msg += ` (retry in ${retry} s)`;
  const err = new Error(msg);
  err.status = resp.status;
  return err;
}

async function api(path, options = {}) {
  const resp = await fetch(path, options);
  if (!resp.ok) throw await apiError(resp);
  return resp.json();
}

function postJSON(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

function setStatus(node, text, error = false) {
  node.textContent = text;
  node.classList.toggle("error", error);
}

function numberOrNull(input) {
  const s = input.value.trim();
  return s === "" ? null : Number(s);
}

// ------------------------------------------------------------------------------------------ routing
function route() {
  const hash = location.hash || "#/playground";
  const parts = hash.replace(/^#\/?/, "").split("/");
  const view = ["playground", "sweeps", "feature"].includes(parts[0]) ? parts[0] : "playground";
  for (const v of ["playground", "sweeps", "feature"]) $(`#view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.view === view);
  if (view === "sweeps") loadSweeps();
  if (view === "feature" && parts[1] !== undefined && parts[1] !== "") {
    const f = Number(parts[1]);
    const sae = parts[2] ? Number(parts[2]) : 0;
    const fresh = f !== state.feature || sae !== state.featureSae;
    if (Number.isInteger(f) && f >= 0 && Number.isInteger(sae) && sae >= 0 && fresh) loadFeature(f, sae);
  }
}

function multiSAE() {
  return !!(state.info && state.info.saes.length > 1);
}

function featureHash(f, sae = 0) {
  return sae ? `#/feature/${f}/${sae}` : `#/feature/${f}`;
}

function saeOptions() {
  return state.info.saes.map((s) => el("option", { value: s.id, text: `SAE ${s.id}: ${s.hook}` }));
}

// ------------------------------------------------------------------------------------------ playground
const featureCache = new Map();

function featureInfo(f, sae = 0) {
  // the feature page's data, fetched once per feature (max activation, firing words)
  const key = `${sae}:${f}`;
  if (!featureCache.has(key)) {
    const p = api(`api/feature/${f}?sae=${sae}`).catch((e) => { featureCache.delete(key); throw e; });
    featureCache.set(key, p);
  }
  return featureCache.get(key);
}

const REL_RANGE = 10; // the slider spans -10..10 x the feature's max activation

function addClamp(feature = "", value = 20, sae = 0) {
  const row = el("div", { cls: "clamp-row" });
  const which = multiSAE() ? el("select", { cls: "sae", "aria-label": "SAE" }, ...saeOptions()) : null;
  if (which) which.value = sae;
  const saeOf = () => (which ? Number(which.value) : 0);
  const f = el("input", { cls: "feature", type: "number", min: "0", placeholder: "feature", "aria-label": "feature" });
  const v = el("input", { cls: "value", type: "number", step: "any", "aria-label": "value", title: "absolute clamp value (latent units)" });
  const slider = el("input", { cls: "strength", type: "range", min: -REL_RANGE, max: REL_RANGE, step: "0.1",
    "aria-label": "strength in units of the feature's max activation", hidden: true });
  const rel = el("span", { cls: "rel muted small" });
  f.value = feature;
  v.value = value;
  const link = el("a", { href: "#/feature", text: "open" });
  let maxAct = null;
  let silent = false; // facts say it never fires: no scale to show
  const showRel = () => {
    if (maxAct) {
      rel.textContent = `${fmt(Number(v.value) / maxAct, 3)} × max (${fmt(maxAct)})`;
      slider.value = Math.max(-REL_RANGE, Math.min(REL_RANGE, Number(v.value) / maxAct));
    } else {
      rel.textContent = f.value === "" ? "" : silent ? "never fires on the reference text" : "max activation unknown";
    }
  };
  let ticket = 0;
  const sync = async () => {
    link.href = f.value === "" ? "#/feature" : featureHash(f.value, saeOf());
    const mine = ++ticket;
    maxAct = null;
    silent = false;
    slider.hidden = true;
    showRel();
    const n = Number(f.value);
    const width = state.info ? state.info.saes[saeOf()].d_sae : Infinity;
    if (f.value === "" || !Number.isInteger(n) || n < 0 || n >= width) return;
    try {
      const d = await featureInfo(n, saeOf());
      if (mine !== ticket) return;
      maxAct = d.max_activation && d.max_activation > 0 ? d.max_activation : null;
      silent = d.max_activation === 0;
    } catch (e) { /* unknown feature: the generate request will say so */ }
    slider.hidden = !maxAct;
    showRel();
  };
  slider.addEventListener("input", () => {
    if (!maxAct) return;
    v.value = Number((Number(slider.value) * maxAct).toPrecision(4));
    showRel();
  });
  v.addEventListener("input", showRel);
  let timer = null;
  f.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(sync, 250); });
  if (which) which.addEventListener("change", sync);
  sync();
  row.append(...(which ? [which] : []), el("label", { cls: "inline", text: "Feature" }), f, el("label", { cls: "inline", text: "value" }), v,
    slider, rel, link, el("button", { type: "button", text: "remove", onclick: () => { row.remove(); clampsChanged(); } }));
  $("#clamps").append(row);
  clampsChanged();
  return row;
}

function clampsChanged() {
  $("#no-clamps").hidden = document.querySelectorAll("#clamps .clamp-row").length > 0;
}

function readClamps() {
  return [...document.querySelectorAll("#clamps .clamp-row")].map((row) => ({
    feature: Number($("input.feature", row).value),
    sae: $("select.sae", row) ? Number($("select.sae", row).value) : 0,
    value: Number($("input.value", row).value),
  }));
}

function showContinuation(box, prompt, text) {
  $(".prompt-echo", box).textContent = prompt ? prompt : "<BOS>";
  $(".cont", box).textContent = text;
}

function markWords(text, words) {
  // text nodes, with the given (lower-case) words in <mark class="fw">
  if (!words.size) return [text];
  const out = [];
  let last = 0;
  for (const m of text.matchAll(/[\p{L}\p{N}']+/gu)) {
    if (!words.has(m[0].toLowerCase())) continue;
    if (m.index > last) out.push(text.slice(last, m.index));
    out.push(el("mark", { cls: "fw", title: "a firing word of a clamped feature", text: m[0] }));
    last = m.index + m[0].length;
  }
  out.push(text.slice(last));
  return out;
}

function commonPrefix(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

async function showDifference(boxes, r) {
  // where the steered text first differs from the unsteered one, and the clamped features' firing words
  const words = new Set();
  for (const c of r.clamps) {
    try {
      for (const w of (await featureInfo(c.feature, c.sae)).firing_words) words.add(w.toLowerCase());
    } catch (e) { /* shown without its words */ }
  }
  const u = r.unsteered.text, st = r.steered.text;
  const i = commonPrefix(u, st);
  for (const [name, text] of [["unsteered", u], ["steered", st]]) {
    const cont = $(".cont", boxes[name]);
    const parts = markWords(text.slice(0, i), words);
    if (i < text.length) {
      parts.push(el("span", { cls: "diverge", title: "from here on the two texts differ" }, ...markWords(text.slice(i), words)));
    }
    cont.replaceChildren(...parts);
  }
  const note = i >= Math.max(u.length, st.length) ? "same text" : `the texts differ from character ${i + 1} on`;
  $(".meta", boxes.steered).textContent += ` · ${note}`;
}

async function generate() {
  const button = $("#generate");
  const status = $("#gen-status");
  const prompt = $("#prompt").value;
  const clamps = readClamps();
  const body = {
    prompt: prompt === "" ? null : prompt,
    clamps,
    mode: $("#mode").value,
    max_new_tokens: Number($("#max-new-tokens").value),
    temperature: Number($("#temperature").value),
    top_p: Number($("#top-p").value),
    seed: numberOrNull($("#seed")),
    stream: true,
  };
  const boxes = { unsteered: $("#out-unsteered"), steered: $("#out-steered") };
  $(".clamp-summary", boxes.steered).textContent = clamps.map((c) => `${multiSAE() ? `SAE ${c.sae}:` : ""}${c.feature}=${c.value}`).join(", ");
  for (const b of Object.values(boxes)) {
    showContinuation(b, prompt, "");
    $(".meta", b).textContent = "";
    b.classList.add("running");
  }
  button.disabled = true;
  setStatus(status, "sending…");
  const t0 = performance.now();
  try {
    const resp = await fetch("api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!resp.ok) throw await apiError(resp);
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let finished = false;
    const onEvent = (ev) => {
      if (ev.event === "queued") {
        setStatus(status, ev.position > 0 ? `queued (${ev.position} ahead)…` : "generating…");
      } else if (ev.event === "step") {
        setStatus(status, `generating… step ${ev.step + 1}`);
        for (const name of ["unsteered", "steered"]) showContinuation(boxes[name], prompt, ev[name].text);
      } else if (ev.event === "result") {
        finished = true;
        const r = ev.result;
        for (const name of ["unsteered", "steered"]) {
          showContinuation(boxes[name], prompt, r[name].text);
          $(".meta", boxes[name]).textContent = `${r[name].tokens.length} tokens`;
        }
        const secs = ((performance.now() - t0) / 1000).toFixed(2);
        setStatus(status, `done in ${secs} s (model ${r.elapsed_s.toFixed(2)} s)`);
        showDifference(boxes, r);
      } else if (ev.event === "error") {
        finished = true;
        setStatus(status, `error ${ev.status}: ${ev.detail}`, true);
      }
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let i;
      while ((i = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, i);
        buffer = buffer.slice(i + 1);
        if (line.trim()) onEvent(JSON.parse(line));
      }
    }
    if (!finished) setStatus(status, "the stream ended early", true);
  } catch (e) {
    setStatus(status, e.message, true);
  } finally {
    button.disabled = false;
    for (const b of Object.values(boxes)) b.classList.remove("running");
  }
}

// ------------------------------------------------------------------------------------------ sweep browser
let searchTimer = null;
let sweepTicket = 0;

function highlighter(q) {
  const terms = [];
  for (const m of q.matchAll(/"([^"]*)"|(\S+)/g)) {
    if (m[1] && m[1].trim()) terms.push(m[1].trim());
    else if (m[2]) terms.push(...(m[2].match(/[\p{L}\p{N}_]+/gu) || []));
  }
  if (!terms.length) return null;
  const escaped = terms.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`(${escaped.join("|")})`, "giu");
}

function textCell(text, re) {
  const td = el("td", { cls: "text" });
  td.append(...highlighted(text, re));
  return td;
}

function sweepColumns() {
  const metrics = state.sweepMetrics;
  const cols = ["feature", "value"];
  for (const m of RANKED) if (metrics.includes(m)) cols.push(m);
  cols.push("text");
  for (const m of SHOWN_METRICS) if (metrics.includes(m)) cols.push(m);
  if (!cols.includes(state.sweep.sort)) cols.push(state.sweep.sort);
  if (state.sweepHasMeanings) cols.push("firing words", "lens tokens");
  return cols;
}

function renderSweepHead() {
  const tr = el("tr");
  for (const c of sweepColumns()) {
    const sortable = !["text", "firing words", "lens tokens"].includes(c);
    const mark = state.sweep.sort === c ? (state.sweep.order === "desc" ? " ▼" : " ▲") : "";
    const th = el("th", { cls: (sortable ? "sortable" : "") + (state.sweep.sort === c ? " sorted" : ""), text: c + mark,
      title: meaningOf(c) });
    if (sortable) {
      th.addEventListener("click", () => {
        if (state.sweep.sort === c) state.sweep.order = state.sweep.order === "desc" ? "asc" : "desc";
        else { state.sweep.sort = c; state.sweep.order = c === "feature" || c === "value" ? "asc" : "desc"; }
        state.sweep.offset = 0;
        loadSweeps();
      });
    }
    tr.append(th);
  }
  $("#sweep-table thead").replaceChildren(tr);
}

async function loadSweeps() {
  const info = state.info;
  if (!info) return;
  if (!info.results.length) { $("#no-results").hidden = false; $("#sweep-ui").hidden = true; return; }
  const s = state.sweep;
  const params = new URLSearchParams({
    results: s.results, q: s.q, sort: s.sort, order: s.order, offset: s.offset, limit: s.limit,
    per_feature: s.per_feature,
  });
  const ticket = ++sweepTicket;
  let page;
  try {
    page = await api(`api/search?${params}`);
  } catch (e) {
    $("#sweep-total").textContent = e.message;
    return;
  }
  if (ticket !== sweepTicket) return; // a newer query was sent meanwhile
  state.sweepMetrics = page.metrics;
  state.sweepHasMeanings = Object.keys(page.meanings || {}).length > 0;
  const sortSelect = $("#sort");
  const keys = ["feature", "value", ...page.metrics];
  if (sortSelect.options.length !== keys.length) {
    sortSelect.replaceChildren(...keys.map((k) => el("option", { value: k, text: k })));
  }
  sortSelect.value = s.sort;
  $("#order").textContent = s.order;
  renderSweepHead();
  const re = highlighter(s.q);
  const cols = sweepColumns();
  const rows = page.rows.map((r) => {
    const tr = el("tr");
    for (const c of cols) {
      if (c === "feature") tr.append(el("td", { cls: "num" }, el("a", { href: featureHash(r.feature, folderSAE()), text: String(r.feature) })));
      else if (c === "value") tr.append(el("td", { cls: "num", text: fmt(r.value) }));
      else if (c === "text") tr.append(textCell(r.text, re));
      else if (c === "firing words" || c === "lens tokens") {
        const m = page.meanings[String(r.feature)];
        const items = m ? (c === "firing words" ? m.firing_words : m.lens_tokens).slice(0, 5) : [];
        tr.append(meaningCell(items, c === "firing words" ? "word" : "pos", re));
      } else tr.append(el("td", { cls: "num", text: fmt(r.metrics[c]) }));
    }
    return tr;
  });
  $("#sweep-table tbody").replaceChildren(...rows);
  const first = page.total ? page.offset + 1 : 0;
  const last = page.offset + page.rows.length;
  $("#sweep-total").textContent = `${page.total} ${page.total === 1 ? "row" : "rows"}`;
  $("#page-info").textContent = `${first}–${last} of ${page.total}`;
  $("#prev").disabled = page.offset === 0;
  $("#next").disabled = last >= page.total;
  const folder = info.results.find((f) => f.id === s.results);
  const ctx = [];
  if (folder) {
    ctx.push(`prompt: ${folder.prompt === null ? "<BOS>" : JSON.stringify(folder.prompt)}`);
    if (folder.unsteered !== null) ctx.push(`unsteered: ${JSON.stringify(folder.unsteered)}`);
    if (folder.manifest.sae) ctx.push(`SAE: ${folder.manifest.sae}`);
  }
  $("#sweep-context").textContent = ctx.join("   ·   ");
}

function useDefaultSort() {
  const folder = state.info && state.info.results.find((f) => f.id === state.sweep.results);
  state.sweep.sort = (folder && RANKED.find((m) => folder.metrics.includes(m))) || "feature";
  state.sweep.order = state.sweep.sort === "feature" ? "asc" : "desc";
}

function meaningOf(name) {
  return (state.info && state.info.metric_meanings[name]) || null;
}

function highlighted(text, re) {
  if (!re) return [text];
  const out = [];
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    out.push(el("mark", { text: m[0] }));
    last = m.index + m[0].length;
  }
  out.push(text.slice(last));
  return out;
}

function meaningCell(items, cls, re) {
  return el("td", { cls: "meaning" }, ...items.map((t) => el("span", { cls: `chip ${cls}` },
    ...highlighted(JSON.stringify(t).slice(1, -1), re))));
}

let meaningTicket = 0;

async function findFeatures() {
  const q = $("#meaning-q").value.trim();
  const table = $("#meaning-table");
  if (!q) { table.hidden = true; $("#meaning-total").textContent = ""; return; }
  const ticket = ++meaningTicket;
  let page;
  try {
    page = await api(`api/features?${new URLSearchParams({ results: state.sweep.results, q, limit: 15 })}`);
  } catch (e) {
    $("#meaning-total").textContent = e.message;
    return;
  }
  if (ticket !== meaningTicket) return;
  const re = highlighter(q);
  $("#meaning-total").textContent = `${page.total} ${page.total === 1 ? "feature" : "features"}`;
  const heads = ["feature", "score", "matched in", "firing words", "lens tokens", "best text"];
  $("thead", table).replaceChildren(el("tr", {}, ...heads.map((h) => el("th", { text: h }))));
  $("tbody", table).replaceChildren(...page.features.map((h) => {
    const where = [h.in_words ? "firing words" : null, h.in_lens ? "lens tokens" : null,
      h.texts_matching ? `${h.texts_matching}/${h.texts} texts` : null].filter((x) => x);
    return el("tr", {},
      el("td", { cls: "num" }, el("a", { href: featureHash(h.feature, folderSAE()), text: String(h.feature) })),
      el("td", { cls: "num", text: fmt(h.score) }), el("td", { cls: "small", text: where.join(", ") }),
      meaningCell(h.firing_words.slice(0, 8), "word", re), meaningCell(h.lens_tokens.slice(0, 6), "pos", re),
      textCell(h.best_text || "", re));
  }));
  table.hidden = false;
}

// ------------------------------------------------------------------------------------------ feature page
function chips(container, items, cls) {
  container.replaceChildren(...items.map((t) => el("span", { cls: `chip ${cls}`, title: fmt(t.value) },
    JSON.stringify(t.text).slice(1, -1), el("span", { cls: "v", text: fmt(t.value, 2) }))));
}

function folderSAE() {
  const folder = state.info && state.info.results.find((r) => r.id === state.sweep.results);
  return folder ? folder.sae : 0;
}

async function loadFeature(f, sae = 0) {
  state.feature = f;
  state.featureSae = sae;
  $("#feature-input").value = f;
  $("#feature-sae").value = sae;
  const status = $("#feature-status");
  setStatus(status, "loading…");
  let data;
  try {
    data = await api(`api/feature/${f}?sae=${sae}`);
  } catch (e) {
    setStatus(status, e.message, true);
    $("#feature-body").hidden = true;
    state.feature = null;
    return;
  }
  setStatus(status, "");
  state.featureData = data;
  $("#feature-body").hidden = false;
  $("#feature-title").textContent = `Feature ${data.feature}` + (multiSAE() ? ` · SAE ${data.sae}` : "");
  const np = $("#np-link");
  np.hidden = !data.neuronpedia_url;
  if (data.neuronpedia_url) np.href = data.neuronpedia_url;
  const stats = [`hook ${data.hook}`, `decoder norm ${fmt(data.decoder_norm)}`];
  if (data.max_activation !== null) stats.push(`max activation ${fmt(data.max_activation)}`);
  if (data.frequency !== null) stats.push(`fires on ${fmt(100 * data.frequency, 2)}% of tokens`);
  if (data.facts_from) stats.push(`facts from ${data.facts_from}`);
  if (data.suggested_value !== null) stats.push(`best sweep value ${fmt(data.suggested_value)}`);
  $("#feature-stats").textContent = stats.join("  ·  ");
  chips($("#lens-top"), data.lens_top, "pos");
  chips($("#lens-bottom"), data.lens_bottom, "neg");
  const silent = data.facts_from !== null && !data.contexts.length;
  const none = (text) => el("span", { cls: "muted small", text });
  $("#firing-words").replaceChildren(...data.firing_words.map((w) => el("span", { cls: "chip word", text: w })),
    ...(silent ? [none("It does not fire on the reference text.")] : []));
  $("#contexts").replaceChildren(...data.contexts.map((c) => el("li", {}, c.before,
    el("span", { cls: "act", title: fmt(c.activation), text: c.token }), c.after,
    el("span", { cls: "muted", text: `  (${fmt(c.activation, 3)})` }))));
  $("#no-facts").hidden = data.facts_from !== null;
  drawHistogram(data.histogram);
  showMeasures(data.sweeps);
  if (data.max_activation && data.max_activation > 0) {
    $("#curve-values").value = [0, 1, 2, 4, 8].map((k) => fmt(k * data.max_activation, 3)).join(", ");
    $("#curve-scale").textContent = `0, 1, 2, 4, 8 × max activation ${fmt(data.max_activation)}`;
  } else {
    $("#curve-scale").textContent = "";
  }
  const blocks = data.sweeps.map((s) => {
    const table = el("table", { cls: "rows" });
    const metrics = FEATURE_ROW_METRICS.filter((m) => s.rows.some((r) => r.metrics[m] !== undefined && r.metrics[m] !== null));
    table.append(el("thead", {}, el("tr", {}, el("th", { text: "value" }), ...metrics.map((m) => el("th", { text: m, title: meaningOf(m) })),
      el("th", { text: "text" }))));
    table.append(el("tbody", {}, ...s.rows.map((r) => el("tr", {}, el("td", { cls: "num", text: fmt(r.value) }),
      ...metrics.map((m) => el("td", { cls: "num", text: fmt(r.metrics[m]) })), el("td", { cls: "text", text: r.text })))));
    return el("div", { cls: "sweep-block" }, el("h4", { text: s.label }), table);
  });
  $("#feature-sweeps").replaceChildren(...(blocks.length ? blocks : [el("p", { cls: "muted", text: "Not in any results folder." })]));
  if (!$("#curve-prompt").value && state.info && state.info.results.length && state.info.results[0].prompt) {
    $("#curve-prompt").value = state.info.results[0].prompt;
  }
  state.curve = null;
  $("#curve-chart").replaceChildren();
  $("#curve-table thead").replaceChildren();
  $("#curve-table tbody").replaceChildren();
  setStatus($("#curve-status"), "");
}

function drawHistogram(h) {
  const box = $("#histogram");
  if (!h) { box.replaceChildren(); $("#hist-note").textContent = "(no feature facts)"; return; }
  $("#hist-note").textContent = `fires on ${fmt(100 * h.share, 3)}% of ${h.tokens} tokens`;
  if (!h.active) { box.replaceChildren(el("p", { cls: "muted small", text: "It never fires on the reference text." })); return; }
  const W = 440, H = 110, L = 34, B = 18, T = 6;
  const top = Math.max(...h.counts);
  const bw = (W - L - 4) / h.counts.length;
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "activation histogram" });
  const sy = (c) => (c > 0 ? (Math.log1p(c) / Math.log1p(top)) * (H - T - B) : 0); // log scale: rare strong activations stay visible
  h.counts.forEach((c, i) => {
    const bar = svg("rect", { class: "bar", x: L + i * bw, y: H - B - sy(c), width: Math.max(1, bw - 1), height: sy(c) });
    bar.append(svg("title", {}, `${fmt(h.edges[i])}–${fmt(h.edges[i + 1])}: ${c} tokens`));
    root.append(bar);
  });
  root.append(svg("text", { x: L, y: H - 4 }, "0"));
  root.append(svg("text", { x: W - 4, y: H - 4, "text-anchor": "end" }, `${fmt(h.max)} (max)`));
  root.append(svg("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, String(top)));
  root.append(svg("text", { x: L - 4, y: H - B, "text-anchor": "end" }, "1"));
  box.replaceChildren(root);
}

function showMeasures(sweeps) {
  const blocks = sweeps.map((s) => {
    const names = [];
    for (const r of s.rows) for (const k of Object.keys(r.metrics)) if (!names.includes(k)) names.push(k);
    const table = el("table", { cls: "rows" });
    table.append(el("thead", {}, el("tr", {}, el("th", { text: "value", title: "the sweep's value" }),
      ...names.map((m) => el("th", { text: m, title: meaningOf(m) })))));
    table.append(el("tbody", {}, ...s.rows.map((r) => el("tr", {}, el("td", { cls: "num", text: fmt(r.value) }),
      ...names.map((m) => el("td", { cls: "num", text: fmt(r.metrics[m]) }))))));
    return el("div", { cls: "sweep-block" }, el("h4", { text: s.label }), table);
  });
  $("#measures-panel").hidden = !blocks.length;
  $("#measures").replaceChildren(...blocks);
}

function sendToPlayground() {
  const d = state.featureData;
  if (!d) return;
  $("#clamps").replaceChildren();
  addClamp(d.feature, d.suggested_value !== null ? d.suggested_value : 20, d.sae);
  location.hash = "#/playground";
}

const CURVE_METRICS = {
  score: "score", hits_words: "firing-word hits", hits_lens: "promoted-token hits", kl: "mean KL (nats)",
  fluency_drop: "fluency drop (nats/token)", repetition: "repetition",
};

async function runCurve() {
  const status = $("#curve-status");
  const values = $("#curve-values").value.split(/[\s,]+/).filter((x) => x !== "").map(Number);
  const prompt = $("#curve-prompt").value;
  const body = {
    feature: state.feature, sae: state.featureSae || 0, values, prompt: prompt === "" ? null : prompt,
    max_new_tokens: Number($("#curve-tokens").value),
  };
  $("#curve-run").disabled = true;
  setStatus(status, "generating…");
  try {
    state.curve = await postJSON("api/compare", body);
    setStatus(status, `done (model ${state.curve.elapsed_s.toFixed(2)} s)`);
    const select = $("#curve-metric");
    const available = Object.keys(CURVE_METRICS).filter((m) => state.curve.points.some((p) => p[m] !== null));
    const keep = available.includes(select.value) ? select.value : available[0];
    select.replaceChildren(...available.map((m) => el("option", { value: m, text: CURVE_METRICS[m] })));
    select.value = keep;
    drawCurve();
  } catch (e) {
    setStatus(status, e.message, true);
  } finally {
    $("#curve-run").disabled = false;
  }
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function drawCurve() {
  const c = state.curve;
  if (!c) return;
  const metric = $("#curve-metric").value;
  const pts = c.points.filter((p) => p[metric] !== null).map((p) => ({ x: p.value, y: p[metric] }));
  const base = c.unsteered[metric];
  const W = 640, H = 240, L = 56, R = 16, T = 14, B = 36;
  const xs = pts.map((p) => p.x);
  const ys = pts.map((p) => p.y).concat(base !== null ? [base] : []);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(0, ...ys), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y1 = y0 + 1; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "strength curve" });
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: sy(y), y2: sy(y) }));
    root.append(svg("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end" }, fmt(y, 3)));
  }
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  for (const p of pts) root.append(svg("text", { x: sx(p.x), y: H - B + 14, "text-anchor": "middle" }, fmt(p.x)));
  root.append(svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, `clamp value of feature ${c.feature}`));
  if (base !== null) {
    root.append(svg("line", { class: "base", x1: L, x2: W - R, y1: sy(base), y2: sy(base) }));
    root.append(svg("text", { x: W - R, y: sy(base) - 4, "text-anchor": "end" }, "unsteered"));
  }
  const sorted = [...pts].sort((a, b) => a.x - b.x);
  root.append(svg("polyline", { class: "line", points: sorted.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" ") }));
  for (const p of sorted) {
    const dot = svg("circle", { class: "dot", cx: sx(p.x), cy: sy(p.y), r: 4 });
    dot.append(svg("title", {}, `${fmt(p.x)}: ${fmt(p.y)}`));
    root.append(dot);
  }
  root.append(svg("text", { x: L + 4, y: T + 10 }, CURVE_METRICS[metric]));
  $("#curve-chart").replaceChildren(root);
  const cols = ["value", metric, "text"];
  $("#curve-table thead").replaceChildren(el("tr", {}, ...cols.map((k) => el("th", { text: k === metric ? CURVE_METRICS[k] : k }))));
  const rows = [c.unsteered, ...c.points].map((p) => el("tr", {},
    el("td", { cls: "num", text: p.value === null ? "unsteered" : fmt(p.value) }),
    el("td", { cls: "num", text: fmt(p[metric]) }), el("td", { cls: "text", text: p.text })));
  $("#curve-table tbody").replaceChildren(...rows);
}

// ------------------------------------------------------------------------------------------ start
async function start() {
  $("#add-clamp").addEventListener("click", () => addClamp());
  $("#generate").addEventListener("click", generate);
  $("#prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
  $("#search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.sweep.q = $("#search").value; state.sweep.offset = 0; loadSweeps(); }, 200);
  });
  $("#sort").addEventListener("change", () => { state.sweep.sort = $("#sort").value; state.sweep.offset = 0; loadSweeps(); });
  $("#order").addEventListener("click", () => { state.sweep.order = state.sweep.order === "desc" ? "asc" : "desc"; state.sweep.offset = 0; loadSweeps(); });
  $("#per-feature").addEventListener("change", () => { state.sweep.per_feature = $("#per-feature").checked; state.sweep.offset = 0; loadSweeps(); });
  $("#sweep-folder").addEventListener("change", () => { state.sweep.results = Number($("#sweep-folder").value); state.sweep.offset = 0; useDefaultSort(); loadSweeps(); findFeatures(); });
  $("#prev").addEventListener("click", () => { state.sweep.offset = Math.max(0, state.sweep.offset - state.sweep.limit); loadSweeps(); });
  $("#next").addEventListener("click", () => { state.sweep.offset += state.sweep.limit; loadSweeps(); });
  $("#feature-go").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = $("#feature-input").value;
    const h = featureHash(v, Number($("#feature-sae").value || 0));
    if (v !== "") { state.feature = null; location.hash = h; if (location.hash === h) route(); }
  });
  $("#to-playground").addEventListener("click", sendToPlayground);
  $("#curve-run").addEventListener("click", runCurve);
  $("#curve-metric").addEventListener("change", drawCurve);
  $("#curve-metric").replaceChildren(...Object.entries(CURVE_METRICS).map(([m, t]) => el("option", { value: m, text: t })));
  let meaningTimer = null;
  $("#meaning-q").addEventListener("input", () => { clearTimeout(meaningTimer); meaningTimer = setTimeout(findFeatures, 250); });
  clampsChanged();
  try {
    state.info = await api("api/info");
  } catch (e) {
    const banner = $("#banner");
    banner.textContent = `cannot reach the server: ${e.message}`;
    banner.hidden = false;
  }
  const info = state.info;
  if (info) {
    $("#model-info").textContent = info.saes.length > 1
      ? `${info.model} · ${info.saes.length} SAEs: ${info.saes.map((s) => `${s.hook} (${s.d_sae} features)`).join(", ")}`
      : `${info.model} · ${info.sae} · ${info.hook} · ${info.d_sae} features`;
    $("#feature-sae").replaceChildren(...saeOptions());
    $("#feature-sae").hidden = info.saes.length < 2;
    const lim = info.limits;
    $("#max-new-tokens").max = lim.max_new_tokens;
    $("#curve-tokens").max = lim.max_new_tokens;
    $("#prompt").maxLength = lim.max_prompt_chars;
    $("#feature-input").max = Math.max(...info.saes.map((s) => s.d_sae)) - 1;
    const saeNote = (f) => (info.saes.length > 1 ? `, SAE ${f.sae}` : "");
    $("#sweep-folder").replaceChildren(...info.results.map((f) => el("option", { value: f.id, text: `${f.label} (${f.rows} rows${saeNote(f)})` })));
    $("#sweep-folder").hidden = info.results.length < 2;
    useDefaultSort();
  }
  window.addEventListener("hashchange", route);
  route();
}

start();
