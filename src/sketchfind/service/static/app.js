// sketchfind page: draw on the canvas, results update after every stroke, click a result to see why.
// Plain JS, no dependencies, nothing loaded from other hosts.
"use strict";

// Edits within one frame (60 Hz) make one search, and a stroke started within it cancels the search. The
// canvas PNG is encoded while the debounce runs, so the wait hides the encoding instead of adding to it.
const DEBOUNCE_MS = 16;
const INK = "#000", PAPER = "#fff";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d", { willReadFrequently: false });

const state = {
  tool: "pen",
  width: 5,
  items: [],        // drawn items in order: {kind: "stroke", tool, width, points} or {kind: "image", image}
  redo: [],
  current: null,    // the stroke being drawn
  pointerId: null,
  uploaded: null,   // a sketch file being searched as-is (until the next stroke)
  timer: null,
  inFlight: false,  // a search request is out: the page sends one at a time (see search())
  queued: null,     // {png, retries}: the search to send when it answers (the newest sketch wins)
  seq: 0,
  strokeEnd: 0,     // performance.now() when the last stroke ended
  photos: null,     // how many photos the index holds (from /api/info)
  ann: null,        // the ann strategy's re-ranking head, {fusion, rerankK}, when /api/info tells it
};
// read by the tests and the benchmark: latency of the last search, from stroke end to results shown
// idle: no search pending or in flight (set false when a stroke ends, true once its results are shown)
// answers: searches that ended (results, an error or the empty state), for tests waiting on one
// lastTrace: where the last search's time went, ms after the stroke ended (see trace())
// requests: search requests sent; maxInFlight: the most that were out at once (1: one at a time)
window.sketchfind = {
  searches: 0, answers: 0, lastLatencyMs: null, lastServerMs: null, lastResults: [], lastTrace: null, idle: true,
  requests: 0, maxInFlight: 0,
};

function answered(seq) {
  if (seq !== state.seq) return;
  window.sketchfind.answers += 1;
  window.sketchfind.idle = true;
}

// ------------------------------------------------------------------ drawing

function clearPaper() {
  ctx.save();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = PAPER;
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.restore();
}

function drawStroke(stroke) {
  const pts = stroke.points;
  ctx.strokeStyle = ctx.fillStyle = stroke.tool === "eraser" ? PAPER : INK;
  ctx.lineWidth = stroke.width;
  ctx.lineCap = ctx.lineJoin = "round";
  if (pts.length === 1) {  // a dot
    ctx.beginPath();
    ctx.arc(pts[0][0], pts[0][1], stroke.width / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  ctx.beginPath();
  ctx.moveTo(pts[0][0], pts[0][1]);
  for (let i = 1; i < pts.length; i++) ctx.lineTo(pts[i][0], pts[i][1]);
  ctx.stroke();
}

function drawImageFitted(image) {
  const scale = Math.min(canvas.width / image.width, canvas.height / image.height);
  const w = image.width * scale, h = image.height * scale;
  ctx.drawImage(image, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
}

function redraw() {
  clearPaper();
  for (const item of state.items) {
    if (item.kind === "image") drawImageFitted(item.image);
    else drawStroke(item);
  }
}

function hasInk() {
  return state.items.some((item) => item.kind === "image" || item.tool === "pen");
}

function canvasPoint(event) {
  const rect = canvas.getBoundingClientRect();
  return [
    (event.clientX - rect.left) * (canvas.width / rect.width),
    (event.clientY - rect.top) * (canvas.height / rect.height),
  ];
}

canvas.addEventListener("pointerdown", (event) => {
  if (state.pointerId !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  state.pointerId = event.pointerId;
  clearTimeout(state.timer);  // the person is still drawing: wait for this stroke too
  state.uploaded = null;
  state.current = { kind: "stroke", tool: state.tool, width: Number(state.width), points: [canvasPoint(event)] };
  drawStroke(state.current);
});

canvas.addEventListener("pointermove", (event) => {
  if (event.pointerId !== state.pointerId || !state.current) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  const pts = state.current.points;
  for (const e of events.length ? events : [event]) pts.push(canvasPoint(e));
  // draw only the new segment
  const n = pts.length, seg = { ...state.current, points: pts.slice(Math.max(0, n - events.length - 1)) };
  drawStroke(seg);
});

function endStroke(event) {
  if (event.pointerId !== state.pointerId || !state.current) return;
  state.pointerId = null;
  state.items.push(state.current);
  state.current = null;
  state.redo = [];
  state.strokeEnd = performance.now();
  updateButtons();
  scheduleSearch();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

function setTool(tool) {
  state.tool = tool;
  for (const name of ["pen", "eraser"]) {
    $(name).classList.toggle("active", name === tool);
    $(name).setAttribute("aria-pressed", String(name === tool));
  }
}

function undo() {
  if (!state.items.length) return;
  state.redo.push(state.items.pop());
  afterEdit();
}

function redo() {
  if (!state.redo.length) return;
  state.items.push(state.redo.pop());
  afterEdit();
}

function clearAll() {
  if (!state.items.length) return;
  state.items = [];
  state.redo = [];
  afterEdit();
}

function afterEdit() {
  state.uploaded = null;
  redraw();
  updateButtons();
  state.strokeEnd = performance.now();
  scheduleSearch();
}

function updateButtons() {
  $("undo").disabled = !state.items.length;
  $("redo").disabled = !state.redo.length;
  $("clear").disabled = !state.items.length;
}

$("pen").addEventListener("click", () => setTool("pen"));
$("eraser").addEventListener("click", () => setTool("eraser"));
$("width").addEventListener("input", (e) => { state.width = Number(e.target.value); });
$("undo").addEventListener("click", undo);
$("redo").addEventListener("click", redo);
$("clear").addEventListener("click", clearAll);
$("strategy").addEventListener("change", () => { showStrategyHint(); searchAgain(); });
$("k").addEventListener("change", searchAgain);
document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement;
  if (typing || $("viewer").open) return;
  const key = event.key.toLowerCase();
  if ((event.ctrlKey || event.metaKey) && key === "z") { event.preventDefault(); event.shiftKey ? redo() : undo(); }
  else if ((event.ctrlKey || event.metaKey) && key === "y") { event.preventDefault(); redo(); }
  else if (key === "p") setTool("pen");
  else if (key === "e") setTool("eraser");
});

// ------------------------------------------------------------------ search options

// exhaustive scores every photo with the relation network: fine on small indexes, slow on big ones
function showStrategyHint() {
  const hint = $("strategy-hint");
  hint.hidden = $("strategy").value !== "exhaustive";
  const here = state.photos === null ? "" : ` This index holds ${state.photos.toLocaleString()} photos.`;
  hint.textContent = "⚠ Slow on large galleries: exhaustive scores every photo with the relation network — " +
    `seconds per search at 10,000 photos, about 30 s at 70,000.${here}`;
}

function resultCount() {
  const input = $("k"), asked = Math.round(Number(input.value));
  const k = asked >= 1 ? Math.min(asked, Number(input.max)) : Number(input.defaultValue);
  input.value = String(k);  // show the count actually searched for
  return k;
}

function searchAgain() {  // a search option changed: the same sketch, searched again
  if (state.uploaded || hasInk()) { state.strokeEnd = performance.now(); scheduleSearch(); }
}

// ------------------------------------------------------------------ upload a sketch file

$("upload").addEventListener("change", async (event) => {
  window.sketchfind.idle = false;
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  state.items = [];
  state.redo = [];
  state.uploaded = file;
  try {  // show the file on the canvas when the browser can; the server says what is wrong with it otherwise
    if (file.type.startsWith("image/")) {
      state.items.push({ kind: "image", image: await loadImage(URL.createObjectURL(file)) });
    } else if (/\.(nd)?json$/i.test(file.name)) {
      state.items.push(...quickDrawStrokes(await file.text()));
    }
  } catch (_) { /* nothing to show */ }
  redraw();
  updateButtons();
  state.strokeEnd = performance.now();
  search();
});

// QuickDraw JSON ({"drawing": [[xs], [ys]]...} or a bare stroke list; NDJSON: the first line), fitted
function quickDrawStrokes(text) {
  let data;
  try { data = JSON.parse(text); } catch (_) { data = JSON.parse(text.split("\n").find((line) => line.trim())); }
  const strokes = (Array.isArray(data) ? data : data.drawing).filter((s) => s[0].length);
  const xs = strokes.flatMap((s) => s[0]), ys = strokes.flatMap((s) => s[1]);
  const minX = Math.min(...xs), minY = Math.min(...ys);
  const span = Math.max(Math.max(...xs) - minX, Math.max(...ys) - minY, 1);
  const margin = 32, scale = (canvas.width - 2 * margin) / span;
  const offX = (canvas.width - (Math.max(...xs) - minX) * scale) / 2, offY = (canvas.height - (Math.max(...ys) - minY) * scale) / 2;
  return strokes.map((s) => ({
    kind: "stroke", tool: "pen", width: state.width,
    points: s[0].map((x, i) => [offX + (x - minX) * scale, offY + (s[1][i] - minY) * scale]),
  }));
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("not an image"));
    image.src = url;
  });
}

// ------------------------------------------------------------------ searching

function scheduleSearch() {
  window.sketchfind.idle = false;
  state.seq += 1;  // the sketch changed: an answer still in flight is for an older sketch
  clearTimeout(state.timer);
  // toBlob copies the canvas when called: this PNG is the sketch as it is now, whatever is drawn next
  const png = state.uploaded || !hasInk() ? null : canvasBlob();
  state.timer = setTimeout(() => search(png), DEBOUNCE_MS);
}

function canvasBlob() {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

// milestones of one search, ms after the stroke ended: fired (debounce over), encoded (canvas PNG made),
// response (headers in), parsed (JSON read), grid (cards in the DOM), shown (thumbnails decoded)
function trace(marks, name) {
  marks[name] = performance.now() - state.strokeEnd;
}

// One search request at a time. A request the page gives up on still costs the server its whole search (the
// model runs to the end), and the server answers 429 beyond two at once from one client: so while one is out,
// the newest sketch waits and goes as soon as it answers (an answer for an older sketch is not shown).
async function search(png = null, retries = 0) {  // png: the canvas already being encoded (scheduleSearch)
  if (state.inFlight) {
    state.queued = { png, retries };
    return;
  }
  state.inFlight = true;
  try {
    await sendSearch(png, retries);
  } finally {
    state.inFlight = false;
    const next = state.queued;
    state.queued = null;
    if (next) search(next.png, next.retries);
  }
}

// search requests out now; window.sketchfind counts them for the tests
let requestsOut = 0;
async function counted(request) {
  requestsOut += 1;
  window.sketchfind.requests += 1;
  window.sketchfind.maxInFlight = Math.max(window.sketchfind.maxInFlight, requestsOut);
  try { return await request; } finally { requestsOut -= 1; }
}

const BUSY_RETRIES = 3;  // a 429 (this client's other tabs are searching too): tried again after Retry-After

async function sendSearch(png, retries) {
  const seq = ++state.seq;
  const marks = {};
  trace(marks, "fired");
  window.sketchfind.idle = false;
  if (!state.uploaded && !hasInk()) {
    showEmpty();
    answered(seq);
    return;
  }
  setStatus("Searching…", "busy");
  const form = new FormData();
  const sketch = state.uploaded || (await (png || canvasBlob()));
  form.append("sketch", sketch, state.uploaded ? state.uploaded.name : "sketch.png");
  form.append("k", String(resultCount()));
  form.append("strategy", $("strategy").value);
  trace(marks, "encoded");
  let body;
  try {
    const response = await counted(fetch("/api/search", { method: "POST", body: form }));
    trace(marks, "response");
    body = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, body, response.headers.get("Retry-After"));
    trace(marks, "parsed");
    window.sketchfind.lastResponseMs = marks.parsed;
  } catch (error) {
    if (seq !== state.seq) return;  // a newer sketch is on its way
    if (error instanceof ApiError && error.status === 429 && retries < BUSY_RETRIES) {
      setStatus("The server is busy — searching again in a moment…", "busy");
      await new Promise((resolve) => setTimeout(resolve, 1000 * Math.min(Number(error.retryAfter) || 1, 5)));
      if (seq === state.seq && !state.queued) state.queued = { png: sketch, retries: retries + 1 };
      return;
    }
    showError(error);
    answered(seq);
    return;
  }
  if (seq !== state.seq) return;
  await showResults(body, seq, marks);
  answered(seq);
}

class ApiError extends Error {
  constructor(status, body, retryAfter = null) {
    super(body && body.detail ? body.detail : `the server answered ${status}`);
    this.status = status;
    this.code = body && body.code;
    this.retryAfter = retryAfter;
  }
}

function adviceFor(error) {
  if (!(error instanceof ApiError)) return "Cannot reach the sketchfind server — is it still running? Then draw again.";
  switch (error.code) {
    case "empty_sketch": return "The sketch is empty — draw something (with the pen, not the eraser).";
    case "too_large": return `${error.message}. Try a smaller file.`;
    case "bad_input": return `That sketch cannot be used: ${error.message}. Upload a PNG, JPEG, SVG or QuickDraw JSON file, or draw instead.`;
    default: return `Something went wrong: ${error.message}`;
  }
}

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = kind || "";
}

function showEmpty() {
  window.sketchfind.lastResults = [];
  const photos = state.photos === null ? "your photos" : `${state.photos.toLocaleString()} photos`;
  setStatus(`Draw something to search ${photos}.`);
  $("grid").replaceChildren(emptyBox("Your results will appear here as soon as you lift the pen."));
}

function showError(error) {
  setStatus(adviceFor(error), "error");
  $("grid").replaceChildren();
}

function emptyBox(text) {
  const box = document.createElement("div");
  box.className = "empty";
  box.textContent = text;
  return box;
}

async function showResults(body, seq, marks) {
  const grid = $("grid");
  if (!body.results.length) {
    setStatus("No photos in the index yet.", "error");
    grid.replaceChildren(emptyBox("The index is empty: start the server with a photo folder, e.g. " +
      "`sketchfind serve ~/Pictures`, or upload photos through the API."));
    return;
  }
  const cards = body.results.map((hit) => resultCard(hit, body.strategy));
  grid.replaceChildren(...cards);
  trace(marks, "grid");
  window.sketchfind.lastGridMs = marks.grid;
  // "shown" = the thumbnails are decoded and on screen, not merely requested
  await Promise.all(cards.map((card) => card.querySelector("img").decode().catch(() => null)));
  if (seq !== state.seq) return;
  trace(marks, "shown");
  const latency = marks.shown;
  Object.assign(window.sketchfind, {
    searches: window.sketchfind.searches + 1,
    lastLatencyMs: latency,
    lastServerMs: body.server_ms,
    lastResults: body.results,
    lastTrace: { ...marks, at: state.strokeEnd, server: body.server_ms, timings: body.timings_ms },
  });
  setStatus(`${body.results.length} best matches · ${Math.round(latency)} ms ` +
    `(server ${Math.round(body.server_ms)} ms, ${body.strategy})`);
  grid.dataset.searches = String(window.sketchfind.searches);
}

// What a hit's score means depends on the strategy that ranked it (see sketchfind.search).
function scoreMeaning(strategy, rank) {
  const head = state.ann && state.ann.fusion < 1 && rank <= state.ann.rerankK;
  if (strategy === "ann" && !head) {
    return { name: "similarity", text: "how close your sketch's embedding is to this photo's (cosine, 1 = the same)" };
  }
  if (strategy === "ann") {
    return { name: "blended score", text: "embedding similarity blended with the relation network's score" };
  }
  return { name: "match score", text: "how sure the relation network is that your sketch and this photo " +
    "show the same kind of thing (0 to 1)" };
}

function fixed(x, digits) {  // x.toFixed(digits), without "-0.00" for a cosine a hair below zero
  return (Math.abs(x) < 0.5 * 10 ** -digits ? 0 : x).toFixed(digits);
}

function resultCard(hit, strategy) {
  const card = document.createElement("button");
  card.className = "hit";
  card.dataset.id = hit.id;
  card.dataset.label = hit.label || "";
  card.title = `${hit.label || hit.name} — ${scoreMeaning(strategy, hit.rank).name} ${fixed(hit.score, 3)}`;
  const image = document.createElement("img");
  image.decoding = "async";  // decoded off the main thread: the grid appears while thumbnails arrive
  image.src = hit.thumbnail_url;
  image.alt = hit.label ? `${hit.label} (${hit.name})` : hit.name;
  const caption = document.createElement("span");  // the name may be cut short, never the score
  caption.className = "caption";
  const name = document.createElement("span"), score = document.createElement("span");
  name.className = "name";
  name.textContent = `#${hit.rank} ${hit.label || hit.name}`;
  score.className = "score";
  score.textContent = fixed(hit.score, 2);
  caption.append(name, score);
  card.append(image, caption);
  card.addEventListener("click", () => openViewer(hit, strategy));
  return card;
}

// ------------------------------------------------------------------ large view + explanation

async function openViewer(hit, strategy) {
  const viewer = $("viewer");
  const meaning = scoreMeaning(strategy, hit.rank);
  $("viewer-title").textContent = `#${hit.rank} ${hit.label || ""} ${hit.name}`;
  const score = document.createElement("strong");
  score.textContent = `${meaning.name} ${fixed(hit.score, 3)}`;
  $("viewer-score").replaceChildren(score, ` — ${meaning.text}`);
  $("viewer-photo").src = hit.url;
  const image = $("explain-image"), status = $("explain-status");
  image.hidden = true;
  $("explain-note").hidden = true;
  status.hidden = false;
  status.className = "muted";
  status.textContent = "Working out which parts of your sketch match which parts of the photo…";
  viewer.dataset.photoId = hit.id;
  if (!viewer.open) viewer.showModal();
  const form = new FormData();
  form.append("sketch", state.uploaded || (await canvasBlob()), state.uploaded ? state.uploaded.name : "sketch.png");
  form.append("photo_id", String(hit.id));
  form.append("strategy", strategy);  // explain the score this ranking used
  try {
    const response = await fetch("/api/explain", { method: "POST", body: form });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, body);
    if (viewer.dataset.photoId !== String(hit.id)) return;
    image.src = body.images.combined;
    await image.decode().catch(() => null);
    image.hidden = false;
    const split = body.source === "ret" || body.source === "relation";  // the score itself, split over regions
    $("explain-note").textContent = split
      ? `Warm colours mark the regions that add most to the ${meaning.name}: on the photo, where it holds what ` +
        "your sketch matched; on the sketch, the strokes that matched it."
      : "Warm colours mark the regions that match best; each line links a part of your sketch to the part of " +
        "the photo it matches most.";
    $("explain-note").hidden = false;
    if (body.source === "ret") {  // the similarity above, split over the photo's regions
      status.textContent = `The ${meaning.name} above, split over ${body.grid}×${body.grid} regions of the photo: ` +
        "warm regions add most to it (they hold what your sketch matched).";
    } else if (body.source === "relation") {  // the relation score: its [Ret] term and its map term
      const ret = body.parts.ret.toFixed(1), map = body.parts.map.toFixed(1);
      status.textContent = `The ${meaning.name} above, split over ${body.grid}×${body.grid} regions: the relation ` +
        `network weighs how alike the two look overall ([Ret], ${ret}) and how their parts match (map, ${map}).`;
    } else {  // the picture's caption prints the relation network's score of the pair: say how it relates to ours
      const caption = meaning.name === "match score" ? "is the same as above"
        : `is the relation network's own score of this pair (0 to 1), a different measure from the ${meaning.name} above`;
      status.textContent = `From the ${body.source} map, ${body.grid}×${body.grid} regions. ` +
        `The “match score” under the picture ${caption}.`;
    }
    viewer.dataset.explained = "1";
  } catch (error) {
    status.className = "error";
    status.textContent = `No explanation: ${adviceFor(error)}`;
  }
}

$("viewer").addEventListener("close", () => {
  $("viewer").dataset.explained = "";
  $("viewer-photo").removeAttribute("src");
});
$("viewer").addEventListener("click", (event) => {  // a click on the backdrop closes
  if (event.target === $("viewer")) $("viewer").close();
});

// ------------------------------------------------------------------ start

async function loadInfo() {
  try {
    const response = await fetch("/api/info");
    const info = await response.json();
    if (!response.ok) throw new ApiError(response.status, info);
    state.photos = info.photos;
    const ann = (info.index && info.index.search_settings) || {};
    if (ann.fusion !== undefined) state.ann = { fusion: ann.fusion, rerankK: ann.rerank_k };
    if (info.default_strategy) $("strategy").value = info.default_strategy;
    $("k").max = String(info.max_k);
    showStrategyHint();
    $("index-info").textContent = `${info.photos.toLocaleString()} photos · model ${info.model}`;
  } catch (error) {
    $("index-info").textContent = "";
    showError(error);
    return;
  }
  if (!hasInk()) showEmpty();
}

clearPaper();
updateButtons();
showEmpty();
loadInfo();
