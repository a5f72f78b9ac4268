"""Stroke end -> results shown on the page, measured in headless Chromium against ``sketchfind serve``.

The server is the real command (``sketchfind serve --index DIR``) in its own process; Chromium (Debian's,
driven by Playwright) draws traced sketchy-mini sketches stroke by stroke with the mouse. After each
stroke the page searches (30 ms debounce, k=24) and we read its own clock: from the pointerup of the
stroke to the response, to the grid in the DOM, and to every thumbnail decoded ("shown"). The first
sketch is a warm-up and not counted.

    python benchmarks/bench_page.py                   # 3,125 photos, default model, Searcher defaults
    python benchmarks/bench_page.py --photos 500 --sketches 4

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


def start_server(index_dir: Path, port: int, strategy: str | None, threads: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "SKETCHFIND_INDEX": str(index_dir)}
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


def measure(url: str, sketches: list[Path]) -> tuple[list[dict], str]:
    """Per-stroke timings (ms) from the page's own clock; the first sketch is a warm-up."""
    from playwright.sync_api import sync_playwright

    samples = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        version = browser.version
        page = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True).new_page()
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('index-info').textContent.includes('photos')")
        for number, sketch in enumerate(sketches):
            page.click("#clear") if page.is_enabled("#clear") else None
            page.wait_for_function("window.sketchfind.idle")
            for stroke in sketch_strokes(sketch):
                before = page.evaluate("window.sketchfind.searches")
                draw(page, [stroke])
                page.wait_for_function(
                    f"window.sketchfind.idle && window.sketchfind.searches > {before}", timeout=60_000
                )
                if number == 0:
                    continue
                sample = page.evaluate(
                    "({shown: window.sketchfind.lastLatencyMs, response: window.sketchfind.lastResponseMs,"
                    " grid: window.sketchfind.lastGridMs, server: window.sketchfind.lastServerMs})"
                )
                samples.append({"sketch": sketch.name, **sample})
        browser.close()
    return samples, version


def summary(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p90": round(float(np.percentile(arr, 90)), 1),
        "p99": round(float(np.percentile(arr, 99)), 1),
        "mean": round(float(arr.mean()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=3125, help="photos in the index (sketchy-mini)")
    parser.add_argument("--model", default=None, help="model name (default: the default model)")
    parser.add_argument("--strategy", default=None, help="search strategy (default: the Searcher's)")
    parser.add_argument("--sketches", type=int, default=6, help="sketches drawn (the first is a warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the server (default: all)")
    parser.add_argument("--index-dir", type=Path, default=None, help="index to build or reuse")
    parser.add_argument("--out", type=Path, default=RESULTS / "page_latency")
    args = parser.parse_args()

    workdir = Path(tempfile.gettempdir()) / "sketchfind-bench-page"
    workdir.mkdir(exist_ok=True)
    model, weights, model_desc = model_and_weights(args.model, workdir)
    index_dir = args.index_dir or workdir / f"index-{model.cfg.name}-{args.photos}"
    build_seconds = build(index_dir, args.photos, model, weights)
    del model

    sketches = [sorted((SKETCHY / "sketches" / c).glob("*.png"))[0] for c in CLASSES[: args.sketches]]
    load_average = [round(v, 2) for v in os.getloadavg()]
    port = free_port()
    server = start_server(index_dir, port, args.strategy, args.threads)
    try:
        info = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info"))
        samples, chromium = measure(f"http://127.0.0.1:{port}", sketches)
    finally:
        server.terminate()
        server.wait(timeout=30)

    result = {
        "benchmark": "page: stroke end (pointerup) -> results shown (thumbnails decoded), headless Chromium",
        "settings": {
            "photos": info["photos"],
            "model": model_desc,
            "strategy": info["default_strategy"],
            "server_threads": args.threads or "torch default",
            "k": 24,
            "debounce_ms": 30,
            "canvas_px": 512,
            "strokes_measured": len(samples),
            "sketches": [s.name for s in sketches[1:]],
            "chromium": chromium,
            "cpus": os.cpu_count(),
            "load_average": load_average[0],
            "machine": platform.machine(),
            "server": "sketchfind serve (own process, uvicorn), 127.0.0.1",
        },
        "index_build_seconds": round(build_seconds, 1),
        "stroke_to_results_shown_ms": summary([s["shown"] for s in samples]),
        "stroke_to_response_ms": summary([s["response"] for s in samples]),
        "stroke_to_grid_ms": summary([s["grid"] for s in samples]),
        "server_ms": summary([s["server"] for s in samples]),
        "target": "p50 <= 300 ms",
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    s = result["settings"]
    rows = [
        ("stroke end -> results shown (thumbnails decoded)", result["stroke_to_results_shown_ms"]),
        ("stroke end -> response received", result["stroke_to_response_ms"]),
        ("stroke end -> grid in the DOM", result["stroke_to_grid_ms"]),
        ("server time (request in -> response out)", result["server_ms"]),
    ]
    lines = [
        "# Page latency: stroke end -> results shown",
        "",
        f"{s['photos']:,} photos, {s['model']}, strategy `{s['strategy']}`, k={s['k']}, "
        f"server torch threads: {s['server_threads']}, "
        f"debounce {s['debounce_ms']} ms; Chromium {s['chromium']} headless; {s['cpus']} CPUs shared by browser "
        f"and server (load average {s['load_average']} at the start); {s['strokes_measured']} strokes of "
        f"{len(s['sketches'])} traced sketchy-mini sketches. Target: {result['target']}.",
        "",
        "| ms | p50 | p90 | p99 | mean |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {v['p50']} | {v['p90']} | {v['p99']} | {v['mean']} |" for name, v in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
