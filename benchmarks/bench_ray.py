"""Index build: single process vs Ray Data on a local Ray with the same CPUs, in the same run.

    python benchmarks/bench_ray.py --photos 500                       # a few minutes on 2 cores
    python benchmarks/bench_ray.py --photos 48 --repeats 1 --out /tmp/ray_build   # a quick check
    python benchmarks/bench_ray.py --photos 3125 --repeats 1 --out benchmarks/results/ray_build_3125  # all photos
    python benchmarks/bench_ray.py --photos 25000 --repeats 1 --decode auto,tasks \
        --out benchmarks/results/ray_build_25000  # decoding in the actor vs in tasks

The photos are N sketchy-mini photos spread over its 125 classes. Each method builds a fresh index of them
with the default model (the shipped zse-lite0 weights) and the default runtime; the order alternates over
``--repeats`` (single, ray, ray, single, ...) so that load from other processes hits both alike.

Reported per method (median over the repeats):
  wall      photos / seconds of the whole ``build_index`` call: model, scan, decode, encode, commit,
            clustering; for Ray also starting the local Ray and its encoder actor
  steady    photos committed between the commits that pass 10% and 90% of the photos / the time between
            them: the pipeline's rate once it runs, without the start-up and the end
  start-up  seconds until the first batch is committed
  Ray's start-up breakdown (BuildReport.ray_seconds): import and start of Ray (in the background, while the
            driver loads the model and plans), how long the driver then waited for it, the first batch
            (Ray Data's start: workers, the encoder actor, the first decoded batch) and the shutdown
            (in the background, beside clustering and the FAISS index)
The indexes are compared: same photos in the same order (ids), token codes bitwise equal (share of bytes)
and every token within one quantisation step.
Results: benchmarks/results/ray_build.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SKETCHY = HERE.parents[1] / "shared" / "data" / "sketchy-mini"


STAGES = {  # BuildReport.ray_seconds, as the Markdown names them
    "import": "import ray",
    "start": "ray.init",
    "waited": "driver waited for Ray",
    "first_batch": "Ray Data to the first batch",
    "stop": "ray.shutdown",
}


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def gallery(root: Path, n: int) -> list[Path]:
    """Symlinks to n sketchy-mini photos spread evenly over the classes (root/<class>/<file>). Above the
    3,125 photos there are, each photo comes again as a copy under another name (``<stem>-r<k>.jpg``; a copy,
    as the scan takes a file reached by two links once): the build encodes every file, so a large build is
    timed on real photos."""
    photos = sorted((SKETCHY / "photos").glob("*/*.jpg"))
    step = max(1, len(photos) // n)
    order = photos[::step] + [p for i, p in enumerate(photos) if i % step]
    chosen = [(order[i % len(order)], i // len(order)) for i in range(n)]
    for src, repeat in chosen:
        (root / src.parent.name).mkdir(parents=True, exist_ok=True)
        if repeat == 0:
            (root / src.parent.name / src.name).symlink_to(src)
        else:
            shutil.copyfile(src, root / src.parent.name / f"{src.stem}-r{repeat}{src.suffix}")
    return [src for src, _ in chosen]


class CommitClock:
    """Records when each batch is committed (wraps IndexStore.commit_batch for the benchmark's process)."""

    def __init__(self):
        from sketchfind.index.store import IndexStore

        self.times: list[tuple[float, int]] = []
        original = IndexStore.commit_batch

        def timed(store, photos, token_rows, global_rows):
            ids = original(store, photos, token_rows, global_rows)
            self.times.append((time.perf_counter(), len(photos)))
            return ids

        IndexStore.commit_batch = timed


def build(method: str, photos: Path, out: Path, args, clock: CommitClock) -> dict:
    from sketchfind.index import build_index
    from sketchfind.index.distributed import RaySettings

    shutil.rmtree(out, ignore_errors=True)
    on_ray = method.startswith("ray")
    ray = RaySettings(cpus=args.cpus, actors=args.actors, decode=method.split("-")[1]) if on_ray else None
    clock.times.clear()
    start = time.perf_counter()
    report = build_index([photos], out, batch_size=args.batch_size, workers=args.cpus, ray=ray)
    wall = time.perf_counter() - start
    first = clock.times[0][0]
    steady = _middle_rate(clock.times)
    row = {
        "method": method,
        "photos": len(report.new),
        "seconds": wall,
        "photos_per_s": len(report.new) / wall,
        "steady_photos_per_s": steady,
        "startup_seconds": first - start,
        "encode_seconds": report.encode_seconds,
        "skipped": len(report.skipped),
        "ray_seconds": report.ray_seconds,  # Ray's fixed costs (BuildReport.ray_seconds); empty for single
    }
    log(method, {k: _rounded(v) for k, v in row.items()})
    return row


def _middle_rate(times: list[tuple[float, int]]) -> float:
    """Photos per second between the commits that pass 10% and 90% of the photos: the pipeline's rate once it
    runs, without the start-up and the end (commits may come in bursts: an actor that decodes its own files
    hands back 256 of them at once)."""
    total, done, marks = sum(n for _, n in times), 0, []
    for t, n in times:
        done += n
        marks.append((t, done))
    lo = next((t, d) for t, d in marks if d >= 0.1 * total)
    hi = next((t, d) for t, d in marks if d >= 0.9 * total)
    return (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else float("nan")


def compare(single: Path, on_ray: Path) -> dict:
    """Same photos, same order, and tokens equal within the codec's tolerance."""
    from sketchfind.index import IndexStore

    out = {}
    with IndexStore.open(single) as a, IndexStore.open(on_ray) as b:
        sa, sb = a.snapshot(), b.snapshot()
        out["same_photos"] = sorted(a.paths(sa)) == sorted(b.paths(sb))
        out["same_ids"] = a.paths(sa) == b.paths(sb) and sa.ids.tolist() == sb.ids.tolist()
        ca, cb = a.read_codes(sa, np.arange(len(sa))), b.read_codes(sb, np.arange(len(sb)))
        out["codes_bitwise_equal_share"] = float((ca == cb).mean()) if ca.shape == cb.shape else 0.0
        if ca.shape == cb.shape:
            scales = np.maximum(ca[:, : 2 * a.codec.T], cb[:, : 2 * a.codec.T]).copy().view("<f2").astype(np.float32)
            step = float(scales.max() * np.abs(a.codec.ln_weight).max())
            diff = float(np.abs(a.codec.decode(ca) - b.codec.decode(cb)).max())
            out["max_token_diff"], out["quantisation_step"] = diff, step
            out["tokens_within_one_step"] = diff <= step * 1.01
    return out


def machine() -> dict:
    """bench_search's machine description (CPU, cores, versions, load average) + Ray's version."""
    import ray
    import torch
    from bench_search import machine as describe  # this folder is on sys.path when a script here runs

    return {**describe(argparse.Namespace(threads=torch.get_num_threads())), "ray": ray.__version__}


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 2) if isinstance(value, float) else value


def _median(values):
    """Median of floats, key by key of dicts of floats; anything else: the first value."""
    values = list(values)
    if isinstance(values[0], float):
        return statistics.median(values)
    if isinstance(values[0], dict):
        return {k: statistics.median(v[k] for v in values if k in v) for k in values[0]}
    return values[0]


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        "# Index build: single process vs a local Ray with the same CPUs",
        "",
        f"{m['cpu']}, {m['cores']} cores, load average at start {m['load_avg_start'][0]:.2f}, at end "
        f"{result['load_avg_end'][0]:.2f}; torch {m['torch']}, ray {m['ray']}. {s['photos']} sketchy-mini photos, "
        f"model {s['model']}, runtime {s['runtime']}, batch {s['batch_size']}; single process: {s['cpus']} decoding "
        f"threads + the model; Ray: local Ray with {s['cpus']} CPUs, {s['actors']} encoder actor(s). Median of "
        f"{s['repeats']} alternating run(s).",
        "",
        "| method | photos | seconds | photos/s (wall) | photos/s (steady) | start-up s | in the model s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['method']} | {row['photos']} | {row['seconds']:.1f} | {row['photos_per_s']:.1f} | "
            f"{row['steady_photos_per_s']:.1f} | {row['startup_seconds']:.1f} | {row['encode_seconds']:.1f} |"
        )
    for row in result["summary"][1:]:
        stages = row["ray_seconds"]
        if stages:
            lines += [
                "",
                f"{row['method']}: Ray's fixed costs (median s): "
                + ", ".join(f"{STAGES[k]} {v:.1f}" for k, v in stages.items() if k in STAGES)
                + ".",
            ]
    lines += [
        "",
        "Import and start run in the background while the driver loads the model and plans; the shutdown runs "
        "beside clustering and the FAISS index. `ray-auto`: on this CPU-only Ray the encoder actor decodes its own "
        "files (256 per call); `ray-tasks`: CPU tasks decode 32 files each for the actor (how GPU actors are fed).",
    ]
    for method, r in result["ratio"].items():
        c = result["comparison"][method]
        lines += [
            "",
            f"{method} / single process: **{r['wall']:.0%}** of the photos/s end to end, **{r['steady']:.0%}** once "
            "running (target >= 90%). Same index: same photos "
            f"{c['same_photos']}, same ids and order {c['same_ids']}, token code bytes bitwise equal "
            f"{c['codes_bitwise_equal_share']:.2%}, largest token difference {c.get('max_token_diff', 0):.2g} (one "
            f"quantisation step: {c.get('quantisation_step', 0):.2g}).",
        ]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2, help="runs per method, alternating")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray = decoding threads of the single")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument(
        "--decode", default="auto", help="comma-separated RaySettings.decode values, one Ray method each (auto,tasks)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ray_build")
    args = parser.parse_args()

    from sketchfind.models.factory import DEFAULT_MODEL
    from sketchfind.runtime import resolve_runtime

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        gallery(work / "photos", args.photos)
        info = machine()
        clock = CommitClock()
        order = ["single", *(f"ray-{d}" for d in args.decode.split(","))]
        rows = []
        for repeat in range(args.repeats):
            for method in order if repeat % 2 == 0 else order[::-1]:
                rows.append(build(method, work / "photos", work / method, args, clock))
        summary = []
        for method in order:
            mine = [r for r in rows if r["method"] == method]
            summary.append({k: _median(r[k] for r in mine) for k in mine[0]})
        single = summary[0]
        result = {
            "machine": info,
            "settings": {
                "photos": args.photos,
                "repeats": args.repeats,
                "batch_size": args.batch_size,
                "cpus": args.cpus,
                "actors": args.actors,
                "decode": args.decode,
                "model": DEFAULT_MODEL,
                "runtime": resolve_runtime(None),
            },
            "runs": rows,
            "summary": summary,
            "ratio": {
                row["method"]: {
                    "wall": row["photos_per_s"] / single["photos_per_s"],
                    "steady": row["steady_photos_per_s"] / single["steady_photos_per_s"],
                }
                for row in summary[1:]
            },
            "comparison": {method: compare(work / "single", work / method) for method in order[1:]},
            "load_avg_end": os.getloadavg(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
