// ragpress playground: plain JS over the service's REST API (relative URLs, so any route prefix works).
// Every piece of text from the user or the API goes in as a text node or an attribute, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

const BUDGETS = {
  ratio: { min: 0.01, max: 1, step: 0.05, value: 0.5, help: "share of the tokens to keep, in (0, 1]" },
  tokens: { min: 1, max: 1000000, step: 1, value: 200, help: "keep at most this many tokens" },
  threshold: { min: 0, max: 1, step: 0.05, value: 0.5, help: "keep every unit whose score reaches this" },
};

/** Build an element: attributes (null/false skipped) and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() {
    const where = [this.status || null, this.code || null].filter(Boolean).join(" ");
    return where ? `${where}: ${this.message}` : this.message;
  }
}

/** GET (no body) or POST JSON; a non-2xx answer throws ApiError with the API's typed message. */
async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    throw new ApiError(`cannot reach the service (${err.message})`, 0, "network");
  }
  const raw = await resp.text();
  let data = null;
  try { data = raw ? JSON.parse(raw) : null; } catch { /* not JSON: reported below */ }
  if (!resp.ok) {
    const e = data && data.error;
    throw new ApiError(e && e.message ? e.message : `unexpected reply: ${raw.slice(0, 200)}`,
      resp.status, e && e.code);
  }
  if (data === null) throw new ApiError(`unexpected reply (not JSON): ${raw.slice(0, 200)}`, resp.status);
  return data;
}

const fmt = {
  int: (n) => Number(n).toLocaleString("en-US"),
  score: (s) => (Math.abs(s) >= 100 ? s.toFixed(0) : s.toFixed(2)),
  ms: (seconds) => `${Math.round(seconds * 1000)} ms`,
  pct: (x) => `${Math.round(x * 100)} %`,
};

// ---------------------------------------------------------------------------- form
function parsePassages(text) {
  return text.split(/\n[ \t]*\n/).map((s) => s.trim()).filter(Boolean)
    .map((t, i) => ({ id: `p${i + 1}`, text: t }));
}

function readBudget() {
  const mode = $("budget-mode").value;
  const raw = $("budget-value").value;
  const value = mode === "tokens" ? parseInt(raw, 10) : parseFloat(raw);
  return { [mode]: Number.isFinite(value) ? value : null };
}

function setBudgetMode(mode) {
  const b = BUDGETS[mode];
  const input = $("budget-value");
  Object.assign(input, { min: b.min, max: b.max, step: b.step, value: b.value });
  $("budget-help").textContent = b.help;
}

async function loadMethods() {
  const box = $("methods");
  const status = $("methods-status");
  try {
    const data = await api("v1/methods");
    status.remove();
    for (const m of data.methods) {
      const tags = [m.query_aware ? "query-aware" : null, m.handles_code ? "code" : null,
        m.soft_tokens ? "soft tokens" : null, m.budget_modes.join(" / ")].filter(Boolean).join(" · ");
      box.append(el("label", { class: "check method", title: tags },
        el("input", { type: "checkbox", name: "method", value: m.name, checked: m.name === data.default }),
        el("span", {}, m.name), el("small", { class: "muted" }, tags)));
    }
  } catch (err) {
    status.textContent = "";
    showError(`Cannot list the methods (GET /v1/methods): ${err}`);
  }
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// ---------------------------------------------------------------------------- rendering
function stat(label, value, cls) {
  return el("div", { class: `stat ${cls}` }, el("dt", {}, label), el("dd", {}, value));
}

function renderStats(ctx) {
  const seconds = ctx.timings.compress ?? ctx.timings.total;
  const requested = ctx.budget ? Object.entries(ctx.budget).map(([k, v]) => `${k} ${v}`).join(", ") : "default";
  return el("dl", { class: "stats" },
    stat("tokens", `${fmt.int(ctx.tokens_before)} → ${fmt.int(ctx.tokens_after)}`, "stat-tokens"),
    stat("saved", `${fmt.int(ctx.tokens_saved)} (${fmt.pct(ctx.tokens_before ? ctx.tokens_saved / ctx.tokens_before : 0)})`,
      "stat-saved"),
    stat("ratio", ctx.ratio.toFixed(2), "stat-ratio"),
    stat("budget", requested, "stat-budget"),
    stat("time", seconds === undefined ? "–" : fmt.ms(seconds), "stat-time"),
    stat("cache", ctx.cache.hit ? "hit" : "miss", "stat-cache"));
}

/** A passage with the kept spans as <mark> elements (score on hover and as a small label). */
function renderPassage(p, spans) {
  const mine = spans.filter((s) => s.passage_id === p.id).sort((a, b) => a.start - b.start);
  const text = el("p", { class: "passage-text" });
  let pos = 0;
  for (const s of mine) {
    const start = Math.max(s.start, pos);
    const end = Math.min(s.end, p.text.length);
    if (end <= start) continue;
    if (start > pos) text.append(p.text.slice(pos, start));
    const hasScore = typeof s.score === "number";
    text.append(el("mark", { title: hasScore ? `kept · score ${s.score.toFixed(4)}` : "kept",
      "data-score": hasScore ? s.score : null }, p.text.slice(start, end)));
    if (hasScore) text.append(el("small", { class: "score", "aria-label": `score ${fmt.score(s.score)}` }, fmt.score(s.score)));
    pos = end;
  }
  if (pos < p.text.length) text.append(p.text.slice(pos));
  const head = el("header", {},
    el("span", { class: "pid" }, p.id),
    p.title ? el("span", { class: "ptitle" }, p.title) : null,
    typeof p.hitScore === "number" ? el("span", { class: "muted" }, `retrieved #${p.rank + 1} · ${p.hitScore.toFixed(3)}`) : null,
    el("span", { class: "muted kept" }, mine.length ? `${mine.length} kept` : "dropped"));
  return el("article", { class: mine.length ? "passage" : "passage dropped", "data-passage-id": p.id }, head, text);
}

function answerBox(kind, title) {
  const box = el("section", { class: "answer pending", "data-kind": kind, "aria-busy": "true" },
    el("h3", {}, title), el("p", { class: "answer-text" }, "reading…"), el("p", { class: "meta muted" }));
  return box;
}

function fillAnswer(box, res, err) {
  box.classList.remove("pending");
  box.removeAttribute("aria-busy");
  const text = box.querySelector(".answer-text");
  const meta = box.querySelector(".meta");
  if (err) {
    text.replaceWith(el("p", { class: "answer-text card-error", role: "alert" }, String(err)));
    return;
  }
  if (res.answer === null || res.answer === undefined) {
    text.textContent = "no answer (this service has no reader)";
    box.classList.add("none");
    return;
  }
  text.textContent = res.answer.trim() || "(the reader wrote nothing)";
  const r = res.reader;
  if (r) {
    meta.textContent = [r.model_id, `${fmt.int(r.tokens_in)} tokens in`, `prefill ${Math.round(r.prefill_ms)} ms`,
      `decode ${Math.round(r.decode_ms)} ms`, r.context_tokens_cut ? `${fmt.int(r.context_tokens_cut)} context tokens cut` : null]
      .filter(Boolean).join(" · ");
  }
}

function methodCard(method) {
  return el("article", { class: "card", "data-method": method, "aria-busy": "true" },
    el("h2", {}, method), el("p", { class: "muted loading" }, "compressing…"));
}

// ---------------------------------------------------------------------------- one method
async function runMethod(card, { method, query, passages, budget, read }) {
  const common = { query, method, budget, max_new_tokens: 16 };
  let context;
  let shown;
  let compressedAnswer = null;
  try {
    if (passages.length) {
      context = await api("v1/compress", { query, passages, method, budget });
      shown = passages;
    } else { // no passages: the service retrieves them, and reads in the same call
      compressedAnswer = await api("v1/answer", { ...common, read, bypass: false });
      context = compressedAnswer.context;
      shown = compressedAnswer.hits.map((h) => ({ id: h.id, title: h.title, text: h.text, hitScore: h.score, rank: h.rank }));
    }
  } catch (err) {
    card.querySelector(".loading").replaceWith(el("p", { class: "card-error", role: "alert" }, String(err)));
    card.removeAttribute("aria-busy");
    return;
  }
  card.querySelector(".loading").remove();
  card.append(renderStats(context));

  if (read) {
    const full = answerBox("full", "Answer · full context");
    const comp = answerBox("compressed", "Answer · compressed context");
    card.append(el("div", { class: "answers" }, full, comp));
    const sent = shown.map(({ id, title, text }) => (title ? { id, title, text } : { id, text }));
    const ask = (bypass) => api("v1/answer", { ...common, passages: sent, bypass })
      .then((res) => ({ res }), (err) => ({ err }));
    const [f, c] = await Promise.all([
      ask(true),
      compressedAnswer ? Promise.resolve({ res: compressedAnswer }) : ask(false),
    ]);
    fillAnswer(full, f.res, f.err);
    fillAnswer(comp, c.res, c.err);
  }
  card.append(el("div", { class: "passages" }, shown.map((p) => renderPassage(p, context.spans))));
  card.removeAttribute("aria-busy");
}

// ---------------------------------------------------------------------------- wiring
async function onSubmit(ev) {
  ev.preventDefault();
  clearError();
  const results = $("results");
  results.replaceChildren();
  const methods = [...document.querySelectorAll('input[name="method"]:checked')].map((i) => i.value);
  if (!methods.length) {
    showError("Pick at least one method.");
    return;
  }
  const job = {
    query: $("query").value.trim(),
    passages: parsePassages($("passages").value),
    budget: readBudget(),
    read: $("read").checked,
  };
  const button = $("run");
  const status = $("status");
  button.disabled = true;
  status.textContent = job.passages.length ? `compressing ${job.passages.length} passages…` : "retrieving from the index…";
  const t0 = performance.now();
  const cards = methods.map((m) => methodCard(m));
  results.append(...cards);
  const settled = await Promise.allSettled(methods.map((method, i) => runMethod(cards[i], { ...job, method })));
  const broken = settled.find((s) => s.status === "rejected");
  if (broken) showError(`The page failed: ${broken.reason}`);
  status.textContent = `done in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
  button.disabled = false;
}

document.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", onSubmit);
  $("budget-mode").addEventListener("change", (ev) => setBudgetMode(ev.target.value));
  loadMethods();
});
