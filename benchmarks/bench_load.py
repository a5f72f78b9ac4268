"""Load test of ``sketchfind serve`` (issue 12): many clients for a bounded time, loopback only.

    python benchmarks/bench_load.py --index /tmp/page-index --clients 32 --seconds 60
    python benchmarks/bench_load.py --index /tmp/page-index --hostile       # + hostile clients, cheap-search probe

Serves INDEX with ``sketchfind serve --token`` in its own process, then runs CLIENTS threads for SECONDS, each
from its own loopback address (127.0.0.2, 127.0.0.3, ...: the server limits requests per client address, and a
real crowd comes from many addresses). Each client loops over a mix of requests: searches of sketchy-mini
sketches (50%), thumbnails (30%), explanations (10%) and an upload of a new photo followed by its deletion
(10%). Reports per kind: count, errors (any status >= 400 other than 429, and every 5xx), 429s, p50/p99; the
server's resident memory sampled every second (start, peak, end); and whether ``sketchfind info`` counts the
same photos afterwards. Results: ``results/load.{json,md}``.

``--hostile`` adds, in two phases of SECONDS each: HOSTILE_CLIENTS clients (127.0.1.x) looping over the hostile
corpus of ``tests/hostile.py`` as HTTP requests (40 MP JPEG/PNG sketches, a PNG bomb, pathological SVGs and
strokes, malformed JSON, oversized bodies, out-of-range ids, thumbnails of a 40 MP photo), two clients holding
connections with half-sent heads and stalled bodies, and one *cheap search* client (a small sketch, ``ann``,
k=20, one request at a time) timed on its own. Phase 1 runs them beside the load clients, phase 2 without
them (the cheap search beside the hostile requests only). Reports also the 5xx count, tracebacks in the server
log and a consistency check of the index afterwards. Results: ``results/load-hostile.{json,md}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent)]  # this checkout, and tests/hostile.py
SKETCHY = HERE.parents[1] / "shared" / "data" / "sketchy-mini"
SKETCHFIND = Path(sys.executable).parent / "sketchfind"
TOKEN = "load-test-token"
KINDS = (("search", 0.5), ("thumbnail", 0.3), ("explain", 0.1), ("upload+delete", 0.1))
CHEAP_K = 20
SLOW_KINDS = ("half-sent head", "stalled body")


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def new_photo(rng: random.Random) -> bytes:
    """A sketchy-mini photo with a few random pixels changed: new content, so the index adds it."""
    from PIL import Image

    source = rng.choice(sorted((SKETCHY / "photos" / rng.choice(["cup", "swan", "apple"])).glob("*.jpg")))
    image = Image.open(source).convert("RGB")
    for _ in range(8):
        image.putpixel(
            (rng.randrange(image.width), rng.randrange(image.height)), tuple(rng.randrange(256) for _ in "rgb")
        )
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def client(n: int, base: str, deadline: float, sketches: list[Path], ids: list[int], records: list, seed: int) -> None:
    """One client: its own loopback source address, requests until the deadline."""
    import httpx

    rng = random.Random(seed)
    transport = httpx.HTTPTransport(local_address=f"127.0.0.{2 + n}")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, transport=transport, timeout=120) as http:
        while time.monotonic() < deadline:
            kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
            sketch = rng.choice(sketches)
            start = time.perf_counter()
            try:
                if kind == "search":
                    status = http.post("/api/search?k=24", files={"sketch": sketch.read_bytes()}).status_code
                elif kind == "thumbnail":
                    status = http.get(f"/api/photos/{rng.choice(ids)}/thumbnail").status_code
                elif kind == "explain":
                    files = {"sketch": sketch.read_bytes()}
                    status = http.post(f"/api/explain?photo_id={rng.choice(ids)}", files=files).status_code
                else:
                    upload = http.post("/api/photos", files={"files": ("new.jpg", new_photo(rng))}, headers=auth)
                    status = upload.status_code
                    if status == 200 and upload.json()["added"]:
                        status = http.delete(f"/api/photos/{upload.json()['added'][0]['id']}", headers=auth).status_code
            except httpx.HTTPError as exc:
                status = f"{type(exc).__name__}"
            records.append((kind, status, time.perf_counter() - start))


# -- hostile mode ----------------------------------------------------------------------------------------
def hostile_requests(big_jpeg: bytes, big_png: bytes, big_ids: dict[str, int]) -> list[tuple[str, Callable]]:
    """(name, request(http) -> status) for every hostile input the API can be sent (tests/hostile.py)."""
    from tests import hostile

    def sketch(data: bytes, name: str = "sketch", mime: str = "application/octet-stream"):
        return lambda http: http.post("/api/search", files={"sketch": (name, data, mime)}).status_code

    def body(text: str | bytes, path: str = "/api/search"):
        return lambda http: http.post(path, content=text, headers={"content-type": "application/json"}).status_code

    oversized = b"\0" * (11 * 2**20)  # over the 10 MB default upload limit
    cases = [
        ("sketch: 40 MP JPEG", sketch(big_jpeg, "big.jpg", "image/jpeg")),
        ("sketch: 40 MP PNG with alpha", sketch(big_png, "big.png", "image/png")),
        ("sketch: 900 MP PNG bomb", sketch(hostile.png_bomb(), "bomb.png", "image/png")),
        ("sketch: SVG 200k sub-paths", sketch(hostile.svg_subpaths(), "s.svg", "image/svg+xml")),
        ("sketch: SVG 12k sub-paths", sketch(hostile.svg_subpaths(12_000), "s.svg", "image/svg+xml")),
        ("sketch: SVG 20k elements", sketch(hostile.svg_elements(), "s.svg", "image/svg+xml")),
        ("sketch: SVG long lines", sketch(hostile.svg_long_lines(), "s.svg", "image/svg+xml")),
        ("sketch: SVG billion laughs", sketch(hostile.svg_billion_laughs(), "s.svg", "image/svg+xml")),
        ("sketch: strokes 300k points", body(hostile.many_points())),
        *[(f"sketch: strokes {name}", body(text)) for name, text, _ in hostile.BAD_STROKES],
        ("sketch: JSON integer of 5,000 digits", body('{"strokes": [[[' + "9" * 5000 + ", 1], [0, 1]]]}")),
        ("sketch: truncated JPEG", sketch(hostile.truncated_jpeg(), "t.jpg", "image/jpeg")),
        ("sketch: 11 MB body", sketch(oversized, "big.bin")),
        *[
            (
                f"explain: 40 MP PNG sketch, 40 MP {kind} photo",
                lambda http, photo_id=photo_id: (
                    http.post(
                        f"/api/explain?photo_id={photo_id}", files={"sketch": ("big.png", big_png, "image/png")}
                    ).status_code
                ),
            )
            for kind, photo_id in big_ids.items()
        ],
        *[
            (
                f"thumbnail: 40 MP {kind} photo, random size",
                lambda http, photo_id=photo_id: (
                    http.get(f"/api/photos/{photo_id}/thumbnail?size={random.randint(32, 1024)}").status_code
                ),
            )
            for kind, photo_id in big_ids.items()
        ],
        ("photo id 10^30", lambda http: http.get("/api/photos/" + "1" + "0" * 30).status_code),
        ("upload without the token", lambda http: http.post("/api/photos", files={"files": big_jpeg}).status_code),
    ]
    return cases


def hostile_client(n: int, base: str, stop: threading.Event, cases: list, records: list) -> None:
    """Loops over the hostile corpus (shuffled per round) from 127.0.1.<n+2> until ``stop``."""
    import httpx

    rng = random.Random(1000 + n)
    transport = httpx.HTTPTransport(local_address=f"127.0.1.{2 + n}")
    with httpx.Client(base_url=base, transport=transport, timeout=120) as http:
        while not stop.is_set():
            for name, request in rng.sample(cases, len(cases)):
                if stop.is_set():
                    break
                start = time.perf_counter()
                try:
                    status = request(http)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                records.append((name, status, time.perf_counter() - start))


def slow_client(kind: str, n: int, port: int, stop: threading.Event, records: list) -> None:
    """Holds connections the server must cut: a head sent in part, or a body that stalls half-way."""
    while not stop.is_set():
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(f"127.0.2.{2 + n}", 0)) as sock:
            if kind == "half-sent head":
                sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\n")
            else:
                head = (
                    b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
                )
                sock.sendall(head + b"\x89PNG" + b"\0" * 1000)
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except OSError:
                pass
        status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else "closed"
        records.append((kind, status, time.perf_counter() - start))


def cheap_client(base: str, stop: threading.Event, records: list) -> None:
    """One small sketch, ``ann``, k=20, one request at a time, from its own address (127.0.3.2)."""
    import httpx

    sketch = sorted((SKETCHY / "sketches" / "cup").glob("*.png"))[0].read_bytes()
    transport = httpx.HTTPTransport(local_address="127.0.3.2")
    with httpx.Client(base_url=base, transport=transport, timeout=120) as http:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                response = http.post(f"/api/search?k={CHEAP_K}&strategy=ann", files={"sketch": sketch})
                status, answer = response.status_code, response.json()
            except (httpx.HTTPError, ValueError) as exc:
                status, answer = type(exc).__name__, {}
            records.append(("cheap search", status, time.perf_counter() - start, answer))
            time.sleep(0.05)


def check_index(index: Path) -> dict:
    """Opens the index read-only: every photo's tokens decode, the ANN index and clusters cover every photo."""
    from sketchfind.index import IndexStore
    from sketchfind.index.artefacts import load_or_build

    with IndexStore.open(index) as store:
        snap = store.snapshot()
        finite = all(bool(np.isfinite(tokens).all()) for _, tokens in store.iter_tokens(snap))
        art = load_or_build(store, snap, persist=False)
        paths = store.paths(snap)
        return {
            "photos": len(snap),
            "tokens_decode": finite,
            "ann_matches": art.ann is None or art.ann.ntotal == len(snap),
            "clusters_match": art.clusters is None or len(art.clusters.assign) == len(snap),
            "unique_paths": len(set(paths)) == len(paths),
            "artefacts_current": art.info.get("generation") == snap.generation,
        }


def latency(records: list) -> dict:
    """count, errors, 5xx, 429, p50/p95/p99 (ms) and the statuses seen, of (kind, status, seconds, ...) records."""
    times = np.array([r[2] for r in records]) * 1000 if records else np.array([np.nan])
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r[1])] = statuses.get(str(r[1]), 0) + 1
    return {
        "statuses": dict(sorted(statuses.items())),
        "requests": len(records),
        "errors": sum(1 for r in records if not (isinstance(r[1], int) and (r[1] < 400 or r[1] == 429))),
        "5xx": sum(1 for r in records if isinstance(r[1], int) and r[1] >= 500),
        "429": sum(1 for r in records if r[1] == 429),
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "p99_ms": float(np.percentile(times, 99)),
        "max_ms": float(np.max(times)),
    }


def server_breakdown(answers: list[dict]) -> dict:
    """Where a cheap search's time went in the server (p50 / p99, ms): all of it (``server_ms``), the model
    stages (``timings_ms``: encode, ANN, re-ranking) and the rest: waiting for a decode slot and the model
    lock, plus the sketch's decode."""
    if not answers:
        return {}
    server = np.array([a["server_ms"] for a in answers])
    model = np.array([a["timings_ms"].get("total", 0.0) for a in answers])
    out = {}
    for name, values in (("server", server), ("model", model), ("waiting + decode", server - model)):
        out[name] = {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}
    return out


def machine() -> dict:
    """Platform, CPUs, load average and what else was running (a training job may share the CPUs)."""
    top = subprocess.run(["ps", "-eo", "pcpu,ni,etime,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "load_average": os.getloadavg(),
        "top_processes": top.splitlines()[:8],
    }


def sketchfind_info(index: Path) -> dict:
    out = subprocess.run([SKETCHFIND, "info", "-i", index, "--format", "json"], capture_output=True, text=True)
    return json.loads(out.stdout)


def wait_healthy(base: str) -> None:
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="an index of sketchy-mini photos")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--hostile", action="store_true", help="add hostile clients and the cheap-search probe")
    parser.add_argument("--hostile-clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    (run_hostile if args.hostile else run_load)(args)


def start_server(args, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [SKETCHFIND, "serve", "--index", str(args.index), "--port", str(args.port), "--token", TOKEN],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
    )


def gallery_ids(base: str) -> list[int]:
    import httpx

    cup = next(iter(sorted((SKETCHY / "sketches" / "cup").glob("*.png")))).read_bytes()
    return [
        h["id"] for h in httpx.post(f"{base}/api/search?k=200", files={"sketch": cup}, timeout=60).json()["results"]
    ]


def load_sketches() -> list[Path]:
    return sorted((SKETCHY / "sketches").glob("*/*-1.png"))[:200]


def run_load(args) -> None:
    """The plain load test: results/load.{json,md}."""
    photos_before = sketchfind_info(args.index)["counts"]["photos"]
    args.out.mkdir(parents=True, exist_ok=True)
    server = start_server(args, args.out / "load-server.log")
    base = f"http://127.0.0.1:{args.port}"
    try:
        wait_healthy(base)
        ids, sketches = gallery_ids(base), load_sketches()
        records: list = []
        memory = [rss_mb(server.pid)]
        deadline = time.monotonic() + args.seconds
        threads = [
            threading.Thread(target=client, args=(n, base, deadline, sketches, ids, records, n))
            for n in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            memory.append(rss_mb(server.pid))
    finally:
        server.terminate()
        server.wait(timeout=60)
    after = sketchfind_info(args.index)["counts"]["photos"]
    result = {"settings": vars(args) | {"index": str(args.index), "out": str(args.out)}, "load_avg": os.getloadavg()}
    result["memory_mb"] = {"start": memory[0], "peak": max(memory), "end": memory[-1]}
    result["photos_before_after"] = [photos_before, after]
    kinds = {kind: latency([r for r in records if r[0] == kind]) for kind, _ in KINDS}
    result["kinds"] = kinds
    (args.out / "load.json").write_text(json.dumps(result, indent=2, default=str))
    lines = [
        "# Load test: sketchfind serve",
        "",
        f"{args.clients} clients (each from its own loopback address) for {args.seconds:g} s against "
        f"{photos_before} photos; 2 CPUs shared by clients and server; load average {result['load_avg'][0]:.1f}.",
        "",
        "| requests | count | errors | 5xx | 429 | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, k in kinds.items():
        counts = f"{k['requests']} | {k['errors']} | {k['5xx']} | {k['429']}"
        lines.append(f"| {kind} | {counts} | {k['p50_ms']:.0f} | {k['p99_ms']:.0f} |")
    m = result["memory_mb"]
    lines += [
        "",
        f"Server memory (RSS): start {m['start']:.0f} MB, peak {m['peak']:.0f} MB, end {m['end']:.0f} MB. "
        f"Photos in the index before / after (`sketchfind info`): {photos_before} / {after}.",
        "",
    ]
    (args.out / "load.md").write_text("\n".join(lines))
    print("\n".join(lines))


def run_phase(args, base: str, server_pid: int, cases: list, with_load: bool, ids: list[int]) -> dict:
    """One phase of the hostile mode: (load clients +) hostile, slow and cheap-search clients for SECONDS."""
    stop = threading.Event()
    load, hostile, slow, cheap = [], [], [], []
    deadline = time.monotonic() + args.seconds
    threads = [threading.Thread(target=cheap_client, args=(base, stop, cheap))]
    threads += [
        threading.Thread(target=hostile_client, args=(n, base, stop, cases, hostile))
        for n in range(args.hostile_clients)
    ]
    threads += [
        threading.Thread(target=slow_client, args=(kind, n, args.port, stop, slow), daemon=True)
        for n, kind in enumerate(SLOW_KINDS)
    ]
    if with_load:
        sketches = load_sketches()
        threads += [
            threading.Thread(target=client, args=(n, base, deadline, sketches, ids, load, n))
            for n in range(args.clients)
        ]
    memory = [rss_mb(server_pid)]
    for thread in threads:
        thread.start()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        memory.append(rss_mb(server_pid))
    stop.set()
    for thread in threads:
        if not thread.daemon:
            while thread.is_alive():  # requests in flight finish (the server answers every one)
                thread.join(0.5)
                memory.append(rss_mb(server_pid))
    answers = [r[3] for r in cheap if "server_ms" in r[3]]
    return {
        "with_load": with_load,
        "memory_mb": {"start": memory[0], "peak": max(memory), "end": memory[-1]},
        "cheap_search": {
            **latency(cheap),
            "server": server_breakdown(answers),
        },
        "load": {kind: latency([r for r in load if r[0] == kind]) for kind, _ in KINDS} if with_load else {},
        "hostile": {name: latency([r for r in hostile if r[0] == name]) for name, _ in cases},
        "slow": {kind: latency([r for r in slow if r[0] == kind]) for kind in SLOW_KINDS},
    }


def run_hostile(args) -> None:
    """Load + hostile corpus + cheap-search probe, then hostile + probe alone: results/load-hostile.{json,md}."""
    import tempfile

    import httpx
    from PIL import Image
    from tests import hostile

    before = {"machine": machine()}
    photos_before = sketchfind_info(args.index)["counts"]["photos"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-hostile-"))
    big_jpeg = hostile.big_jpeg()
    image = Image.open(io.BytesIO(big_jpeg)).convert("RGBA")
    image.putpixel((0, 0), (0, 0, 0, 0))
    image.save(tmp / "big.png")
    big_png = (tmp / "big.png").read_bytes()
    del image
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "load-hostile-server.log"
    server = start_server(args, log)
    base = f"http://127.0.0.1:{args.port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    phases = {}
    try:
        wait_healthy(base)
        ids = gallery_ids(base)
        big_ids = {}  # 40 MP photos in the index for the duration (deleted at the end)
        for kind, data in (("JPEG", big_jpeg), ("PNG", big_png)):
            files = {"files": (f"big40.{kind.lower()}", data)}
            upload = httpx.post(f"{base}/api/photos", files=files, headers=auth, timeout=300)
            big_ids[kind] = upload.json()["added"][0]["id"]
        cases = hostile_requests(big_jpeg, big_png, big_ids)
        for name, with_load in (("beside load", True), ("hostile only", False)):
            phases[name] = run_phase(args, base, server.pid, cases, with_load, ids)
            print(f"{name}: {json.dumps(phases[name]['cheap_search'])}", file=sys.stderr, flush=True)
        deleted = [
            httpx.delete(f"{base}/api/photos/{i}", headers=auth, timeout=300).status_code for i in big_ids.values()
        ]
    finally:
        server.terminate()
        server.wait(timeout=60)
    server_log = log.read_text(errors="replace")
    result = {
        "settings": {
            "index": str(args.index),
            "seconds_per_phase": args.seconds,
            "load_clients": args.clients,
            "hostile_clients": args.hostile_clients,
            "slow_clients": list(SLOW_KINDS),
            "cheap_search": f"one client, one request at a time: a {len(cases)}-case corpus beside it; "
            f"sketchy-mini cup sketch (PNG), strategy ann, k={CHEAP_K}",
        },
        "machine_before": before["machine"],
        "machine_after": machine(),
        "phases": phases,
        "peak_rss_mb": max(p["memory_mb"]["peak"] for p in phases.values()),
        "5xx": sum(
            k["5xx"]
            for p in phases.values()
            for group in (p["load"], p["hostile"], p["slow"], {"cheap": p["cheap_search"]})
            for k in group.values()
        ),
        "tracebacks_in_server_log": server_log.count("Traceback"),
        "big_photos_deleted": deleted,
        "photos_before_after": [photos_before, sketchfind_info(args.index)["counts"]["photos"]],
        "index_check": check_index(args.index),
    }
    (args.out / "load-hostile.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "load-hostile.md").write_text(hostile_markdown(result))
    print(hostile_markdown(result))


def hostile_markdown(result: dict) -> str:
    s, before, phases = result["settings"], result["machine_before"], result["phases"]
    lines = [
        "# Load test with hostile requests beside it: sketchfind serve",
        "",
        f"Machine: {before['platform']}, {before['cpus']} CPUs; `uptime` before: {before['uptime']}; after: "
        f"{result['machine_after']['uptime']}. The CPUs are shared with whatever else ran (a model-training job "
        "may have been running: see `top_processes` in the JSON).",
        "",
        f"Two phases of {s['seconds_per_phase']:g} s: (1) {s['load_clients']} load clients as in `load.md` + "
        f"{s['hostile_clients']} clients looping over the hostile corpus + 2 slow-connection clients + the "
        f"cheap-search client; (2) the same without the load clients. Cheap search: {s['cheap_search']}.",
        "",
        "| phase | cheap searches | p50 ms | p95 ms | p99 ms | max ms | errors | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in phases.items():
        c = p["cheap_search"]
        lines.append(
            f"| {name} | {c['requests']} | {c['p50_ms']:.0f} | {c['p95_ms']:.0f} | {c['p99_ms']:.0f} | "
            f"{c['max_ms']:.0f} | {c['errors']} | {p['memory_mb']['peak']:.0f} |"
        )
    lines += ["", "Where the cheap search's time went in the server (p50 / p99 ms):", ""]
    for name, p in phases.items():
        parts = "; ".join(
            f"{part} {v['p50_ms']:.0f} / {v['p99_ms']:.0f}" for part, v in p["cheap_search"]["server"].items()
        )
        lines.append(f"- {name}: {parts}")
    lines += [
        "",
        f"Targets: peak server RSS {result['peak_rss_mb']:.0f} MB (<= 2048); cheap-search p99 beside hostile "
        f"requests {phases['hostile only']['cheap_search']['p99_ms']:.0f} ms (<= 1000). 5xx answers: "
        f"{result['5xx']}; tracebacks in the server log: {result['tracebacks_in_server_log']}. Photos before / "
        f"after (`sketchfind info`): {result['photos_before_after'][0]} / {result['photos_before_after'][1]}; "
        f"index check afterwards: {result['index_check']}.",
        "",
        "Requests per kind (hostile ones are meant to get a 4xx, or to have their connection cut):",
        "",
        "| phase | requests | count | statuses | p50 ms | p99 ms |",
        "|---|---|---:|---|---:|---:|",
    ]
    for name, p in phases.items():
        for group in (p["load"], p["hostile"], p["slow"]):
            for kind, k in group.items():
                statuses = ", ".join(f"{status}: {count}" for status, count in k["statuses"].items())
                lines.append(
                    f"| {name} | {kind} | {k['requests']} | {statuses} | {k['p50_ms']:.0f} | {k['p99_ms']:.0f} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
