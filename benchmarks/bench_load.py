"""Load test of ``sketchfind serve`` (issue 12): many clients for a bounded time, loopback only.

    python benchmarks/bench_load.py --index /tmp/page-index --clients 32 --seconds 60

Serves INDEX with ``sketchfind serve --token`` in its own process, then runs CLIENTS threads for SECONDS, each
from its own loopback address (127.0.0.2, 127.0.0.3, ...: the server limits requests per client address, and a
real crowd comes from many addresses). Each client loops over a mix of requests: searches of sketchy-mini
sketches (50%), thumbnails (30%), explanations (10%) and an upload of a new photo followed by its deletion
(10%). Reports per kind: count, errors (any status >= 400 other than 429, and every 5xx), 429s, p50/p99; the
server's resident memory sampled every second (start, peak, end); and whether ``sketchfind info`` counts the
same photos afterwards. Results: ``results/load.{json,md}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SKETCHY = HERE.parents[1] / "shared" / "data" / "sketchy-mini"
SKETCHFIND = Path(sys.executable).parent / "sketchfind"
TOKEN = "load-test-token"
KINDS = (("search", 0.5), ("thumbnail", 0.3), ("explain", 0.1), ("upload+delete", 0.1))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="an index of sketchy-mini photos")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    info = json.loads(
        subprocess.run(
            [SKETCHFIND, "info", "-i", args.index, "--format", "json"], capture_output=True, check=True, text=True
        ).stdout
    )
    photos_before = info["counts"]["photos"]
    args.out.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [SKETCHFIND, "serve", "--index", str(args.index), "--port", str(args.port), "--token", TOKEN],
        stdout=subprocess.DEVNULL,
        stderr=open(args.out / "load-server.log", "w"),
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        ids = [
            h["id"]
            for h in httpx.post(
                f"{base}/api/search?k=200",
                files={"sketch": next(iter(sorted((SKETCHY / "sketches" / "cup").glob("*.png")))).read_bytes()},
                timeout=60,
            ).json()["results"]
        ]
        sketches = sorted((SKETCHY / "sketches").glob("*/*-1.png"))[:200]
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
    after = json.loads(
        subprocess.run(
            [SKETCHFIND, "info", "-i", args.index, "--format", "json"], capture_output=True, check=True, text=True
        ).stdout
    )["counts"]["photos"]
    result = {"settings": vars(args) | {"index": str(args.index), "out": str(args.out)}, "load_avg": os.getloadavg()}
    result["memory_mb"] = {"start": memory[0], "peak": max(memory), "end": memory[-1]}
    result["photos_before_after"] = [photos_before, after]
    kinds = {}
    for kind, _ in KINDS:
        rows = [r for r in records if r[0] == kind]
        times = np.array([r[2] for r in rows]) * 1000 if rows else np.array([np.nan])
        kinds[kind] = {
            "requests": len(rows),
            "errors": sum(1 for r in rows if not (isinstance(r[1], int) and (r[1] < 400 or r[1] == 429))),
            "5xx": sum(1 for r in rows if isinstance(r[1], int) and r[1] >= 500),
            "429": sum(1 for r in rows if r[1] == 429),
            "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99)),
        }
    result["kinds"] = kinds
    args.out.mkdir(parents=True, exist_ok=True)
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


if __name__ == "__main__":
    main()
