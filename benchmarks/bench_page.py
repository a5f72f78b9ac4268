"""Stroke end -> results shown on the page, measured in headless Chromium against ``sketchfind serve``.

The server is the real command (``sketchfind serve --index DIR``) in its own process; Chromium (Debian's,
driven by Playwright) draws traced sketchy-mini sketches stroke by stroke with the mouse. After each
stroke the page searches (k=24) and we read its own clock: from the pointerup of the stroke to the
response, to the grid in the DOM, and to every thumbnail decoded ("shown"). The first sketch is a warm-up
and not counted.

Where the time goes comes from the page's trace (``window.sketchfind.lastTrace``), the browser's Resource
Timing entries (the search request on the wire, the thumbnails fetched) and the server's ``timings_ms``.

    python benchmarks/bench_page.py                   # 3,125 photos, default model, Searcher defaults
    python benchmarks/bench_page.py --photos 500 --sketches 4
    python benchmarks/bench_page.py --baseline-src /tmp/before --rounds 2   # before/after in one run

``--baseline-src`` names another checkout of sketchfind (its ``src`` is put on the server's PYTHONPATH):
both servers are measured in the same run on the same index, in alternating rounds, each round with a fresh
server and a fresh browser (empty caches).

Writes ``benchmarks/results/page_latency.json`` and ``.md``. Without the default model's shipped weights
the same architecture with random weights is used: the timing is the same, the ranking is not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.serving import SKETCHY, draw, launch_chromium, photo_paths  # noqa: E402
from tests.tracing import sketch_strokes  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CLASSES = ["airplane", "teddy_bear", "windmill", "pineapple", "umbrella", "scissors", "cup", "swan", "horse"]


def model_and_weights(name: str | None, workdir: Path):
    """(model, weights path or None, description): shipped weights, else random weights saved to a file."""
    import torch

    import sketchfind
    from sketchfind.errors import CheckpointError
    from sketchfind.models.factory import DEFAULT_MODEL, save_weights

    name = name or DEFAULT_MODEL
    try:
        return sketchfind.load_model(name), None, f"{name} (shipped weights)"
    except CheckpointError:
        torch.manual_seed(0)
        model = sketchfind.load_model(name, random_init=True)
        weights = workdir / f"{name}-random.safetensors"
        save_weights(model, weights)
        return model, weights, f"{name} (random weights: timing only)"


def build(index_dir: Path, n_photos: int, model, weights) -> float:
    """Index the first ``n_photos`` sketchy-mini photos (all classes, round robin); seconds taken (0 if reused)."""
    from sketchfind.index import build_index

    per_class = -(-n_photos // 125)
    paths = photo_paths(per_class=per_class)[:n_photos]
    if (index_dir / "index.sqlite").is_file():
        from sketchfind.search import Searcher

        with Searcher.open(index_dir, model=model) as searcher:
            if len(searcher) == len(paths):
                return 0.0
    start = time.perf_counter()
    build_index(paths, index_dir, model, weights=weights, label_from_folder=True, progress=True)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    index_dir: Path, port: int, strategy: str | None, threads: int | None = None, src: Path | None = None
) -> subprocess.Popen:
    """``sketchfind serve`` in its own process (``src``: the sketchfind source tree to run, default this one)."""
    env = {**os.environ, "SKETCHFIND_INDEX": str(index_dir), "PYTHONPATH": str(src or REPO / "src")}
    if threads:
        env["SKETCHFIND_THREADS"] = str(threads)
    if strategy:
        env["SKETCHFIND_STRATEGY"] = strategy
    cli = Path(sys.executable).with_name("sketchfind")
    proc = subprocess.Popen([str(cli), "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sketchfind serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("sketchfind serve did not start")


# Run in the page after each stroke: its trace, the search request's Resource Timing entry and the
# thumbnails fetched over the network (ms after the stroke ended). Thumbnails served from the browser's
# memory cache make no entry; those from its HTTP cache have transferSize 0.
_SAMPLE_JS = """() => {
  const t = window.sketchfind.lastTrace, rel = (x) => x - t.at;
  const entries = performance.getEntriesByType("resource").filter((e) => e.startTime >= t.at);
  const api = entries.filter((e) => new URL(e.name).pathname === "/api/search").pop();
  const thumbs = entries.filter((e) => e.name.includes("/thumbnail") && e.startTime >= t.at + t.grid - 1);
  const network = thumbs.filter((e) => e.transferSize > 0);
  return {
    shown: t.shown, response: t.parsed, grid: t.grid, server: t.server, timings: t.timings,
    fired: t.fired, encoded: t.encoded, headers: t.response, parsed: t.parsed,
    request_start: api ? rel(api.requestStart) : null, response_start: api ? rel(api.responseStart) : null,
    response_bytes: api ? api.encodedBodySize : null,
    thumbs_network: network.length, thumbs_http_cache: thumbs.length - network.length,
    thumb_bytes: network.reduce((sum, e) => sum + e.encodedBodySize, 0),
    thumbs_done: thumbs.length ? Math.max(...thumbs.map((e) => rel(e.responseEnd))) : null,
  };
}"""


def measure(url: str, sketches: list[Path]) -> tuple[list[dict], str]:
    """Per-stroke timings (ms) from the page's own clock; the first sketch is a warm-up. Each sample also
    says when it was taken (``at_s``: seconds after the server, just started, answered its first request)."""
    from playwright.sync_api import sync_playwright

    samples, started = [], time.monotonic()
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        version = browser.version
        page = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True).new_page()
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('index-info').textContent.includes('photos')")
        page.evaluate("performance.setResourceTimingBufferSize(10000)")
        for number, sketch in enumerate(sketches):
            page.click("#clear") if page.is_enabled("#clear") else None
            page.wait_for_function("window.sketchfind.idle")
            for stroke in sketch_strokes(sketch):
                before = page.evaluate("performance.clearResourceTimings(); window.sketchfind.searches")
                draw(page, [stroke])
                page.wait_for_function(
                    f"window.sketchfind.idle && window.sketchfind.searches > {before}", timeout=60_000
                )
                if number == 0:
                    continue
                sample = page.evaluate(_SAMPLE_JS)
                samples.append({"sketch": sketch.name, "at_s": round(time.monotonic() - started, 1), **sample})
        browser.close()
    return samples, version


def breakdown(samples: list[dict]) -> dict[str, dict]:
    """Stage -> summary (ms): consecutive page milestones, with the search request split by the server's clock."""
    stages: dict[str, list[float]] = {name: [] for name in _STAGES}
    for s in samples:
        on_wire = s["response_start"] - s["request_start"]
        fetched = max(s["grid"], s["thumbs_done"] or 0.0)  # no entry: all from the memory cache
        values = {
            "debounce": s["fired"],
            "canvas PNG + form": s["encoded"] - s["fired"],
            "fetch queued (request start)": s["request_start"] - s["encoded"],
            "server: read body": s["timings"].get("read", 0.0),
            "server: decode sketch": s["timings"].get("prepare", 0.0),
            "server: wait for the model": s["timings"].get("model_wait", 0.0),
            "server: encode": s["timings"].get("encode", 0.0),
            "server: ann + re-rank": s["timings"].get("first_stage", 0.0) + s["timings"].get("rerank", 0.0),
            "server: outside the route (HTTP, middleware)": on_wire - s["server"],
            "response body + JSON": s["parsed"] - s["response_start"],
            "grid in the DOM": s["grid"] - s["parsed"],
            "thumbnails fetched + decoded": s["shown"] - s["grid"],
            "thumbnails: last byte in (of the above)": fetched - s["grid"],
            "thumbnails: decoded after it (of the above)": s["shown"] - fetched,
        }
        for name, value in values.items():
            stages[name].append(value)
    return {name: summary(values) for name, values in stages.items()}


_STAGES = (
    "debounce",
    "canvas PNG + form",
    "fetch queued (request start)",
    "server: read body",
    "server: decode sketch",
    "server: wait for the model",
    "server: encode",
    "server: ann + re-rank",
    "server: outside the route (HTTP, middleware)",
    "response body + JSON",
    "grid in the DOM",
    "thumbnails fetched + decoded",
    "thumbnails: last byte in (of the above)",
    "thumbnails: decoded after it (of the above)",
)


def summary(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p90": round(float(np.percentile(arr, 90)), 1),
        "p99": round(float(np.percentile(arr, 99)), 1),
        "mean": round(float(arr.mean()), 1),
    }


TARGET_P50_MS = 80.0  # issue 11: stroke end -> results shown, p50, on the 3,125 photos


def run_variant(name: str, src: Path | None, index_dir: Path, sketches: list[Path], args) -> dict:
    """One round: a fresh server (``src``) and a fresh browser; samples and what the server reported."""
    port = free_port()
    server = start_server(index_dir, port, args.strategy, args.threads, src)
    try:
        info = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info"))
        samples, chromium = measure(f"http://127.0.0.1:{port}", sketches)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{name}: {len(samples)} strokes, p50 shown {summary([s['shown'] for s in samples])['p50']} ms")
    return {"info": info, "samples": samples, "chromium": chromium}


def variant_result(rounds: list[dict], src: Path | None) -> dict:
    """Summaries of one variant over its rounds."""
    samples = [{**s, "round": number} for number, r in enumerate(rounds, 1) for s in r["samples"]]
    network = [s["thumbs_network"] for s in samples]
    return {
        "src": str(src or REPO / "src"),
        "stroke_to_results_shown_ms": summary([s["shown"] for s in samples]),
        "stroke_to_response_ms": summary([s["response"] for s in samples]),
        "stroke_to_grid_ms": summary([s["grid"] for s in samples]),
        "server_ms": summary([s["server"] for s in samples]),
        "breakdown_ms": breakdown(samples),
        "thumbnails_from_network_per_search": summary(network),
        "thumbnail_kb_per_search": summary([s["thumb_bytes"] / 1024 for s in samples]),
        "response_kb": summary([(s["response_bytes"] or 0) / 1024 for s in samples]),
        "first_measured_stroke_s": [r["samples"][0]["at_s"] for r in rounds if r["samples"]],
        "shown_p50_per_round_ms": [summary([s["shown"] for s in r["samples"]])["p50"] for r in rounds],
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=3125, help="photos in the index (sketchy-mini)")
    parser.add_argument("--model", default=None, help="model name (default: the default model)")
    parser.add_argument("--strategy", default=None, help="search strategy (default: the Searcher's)")
    parser.add_argument("--sketches", type=int, default=6, help="sketches drawn (the first is a warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the server (default: all)")
    parser.add_argument("--index-dir", type=Path, default=None, help="index to build or reuse")
    parser.add_argument("--baseline-src", type=Path, default=None, help="a sketchfind checkout to compare with")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per variant (alternating with the baseline)")
    parser.add_argument("--note", default="", help="what else ran on the machine (goes into the results)")
    parser.add_argument("--out", type=Path, default=RESULTS / "page_latency")
    args = parser.parse_args()

    workdir = Path(tempfile.gettempdir()) / "sketchfind-bench-page"
    workdir.mkdir(exist_ok=True)
    model, weights, model_desc = model_and_weights(args.model, workdir)
    index_dir = args.index_dir or workdir / f"index-{model.cfg.name}-{args.photos}"
    build_seconds = build(index_dir, args.photos, model, weights)
    del model

    sketches = [sorted((SKETCHY / "sketches" / c).glob("*.png"))[0] for c in CLASSES[: args.sketches]]
    variants = {"after": None} if args.baseline_src is None else {"before": args.baseline_src / "src", "after": None}
    load_start = [round(v, 2) for v in os.getloadavg()]
    rounds: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, src in variants.items():
            rounds[name].append(run_variant(name, src, index_dir, sketches, args))
    load_end = [round(v, 2) for v in os.getloadavg()]

    last = rounds["after"][-1]
    result = {
        "benchmark": "page: stroke end (pointerup) -> results shown (thumbnails decoded), headless Chromium",
        "settings": {
            "photos": last["info"]["photos"],
            "model": model_desc,
            "strategy": last["info"]["default_strategy"],
            "server_threads": args.threads or "torch default",
            "k": 24,
            "canvas_px": 512,
            "rounds": args.rounds,
            "strokes_measured": len(last["samples"]) * args.rounds,
            "sketches": [s.name for s in sketches[1:]],
            "chromium": last["chromium"],
            "cpus": os.cpu_count(),
            "load_average_start": load_start,
            "load_average_end": load_end,
            "machine": platform.machine(),
            "server": "sketchfind serve (own process, uvicorn), 127.0.0.1",
            "note": args.note,
        },
        "index_build_seconds": round(build_seconds, 1),
        "target": f"p50 <= {TARGET_P50_MS:g} ms",
        "variants": {name: variant_result(rounds[name], src) for name, src in variants.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    """The results as a Markdown page: the latencies per variant, then where the time went."""
    s, variants = result["settings"], result["variants"]
    names = list(variants)
    rows = [
        ("stroke end -> results shown (thumbnails decoded)", "stroke_to_results_shown_ms"),
        ("stroke end -> response received", "stroke_to_response_ms"),
        ("stroke end -> grid in the DOM", "stroke_to_grid_ms"),
        ("server time (request in -> response out)", "server_ms"),
    ]
    after = variants["after"]["stroke_to_results_shown_ms"]["p50"]
    met = "met" if after <= TARGET_P50_MS else "not met"
    lines = [
        "# Page latency: stroke end -> results shown",
        "",
        f"{s['photos']:,} photos, {s['model']}, strategy `{s['strategy']}`, k={s['k']}, "
        f"server threads: {s['server_threads']}; Chromium {s['chromium']} headless; {s['cpus']} CPUs shared by "
        f"browser and server (load average {s['load_average_start'][0]} at the start, {s['load_average_end'][0]} "
        f"at the end); {s['strokes_measured']} strokes of {len(s['sketches'])} traced sketchy-mini sketches per "
        f"variant ({s['rounds']} round(s), alternating, each with a fresh server and browser). "
        f"Target: {result['target']} ({met}: p50 {after} ms).",
        *([f"\n{s['note']}"] if s.get("note") else []),
        "",
        "| ms | " + " | ".join(f"{n} p50 | {n} p90 | {n} mean" for n in names) + " |",
        "| --- |" + " ---: |" * (3 * len(names)),
    ]
    for label, key in rows:
        cells = [f"{variants[n][key]['p50']} | {variants[n][key]['p90']} | {variants[n][key]['mean']}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    per_round = "; ".join(f"{n} {', '.join(map(str, variants[n]['shown_p50_per_round_ms']))}" for n in names)
    lines += ["", f"Results shown, p50 per round (ms, in the order run): {per_round}."]
    lines += [
        "",
        "## Where the time goes (ms, per stroke)",
        "",
        "| stage | " + " | ".join(f"{n} p50 | {n} mean" for n in names) + " |",
        "| --- |" + " ---: |" * (2 * len(names)),
    ]
    for stage in _STAGES:
        cells = [
            f"{variants[n]['breakdown_ms'][stage]['p50']} | {variants[n]['breakdown_ms'][stage]['mean']}" for n in names
        ]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    for label, key in [
        ("thumbnails fetched over the network per search", "thumbnails_from_network_per_search"),
        ("thumbnail kB fetched per search", "thumbnail_kb_per_search"),
        ("search response kB", "response_kb"),
    ]:
        cells = [f"{variants[n][key]['p50']} | {variants[n][key]['mean']}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
