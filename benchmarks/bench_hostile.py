"""Hostile corpus: peak memory and time of each hostile input, against the stated bounds (issue #12).

    python benchmarks/bench_hostile.py                 # every case, each in its own process
    python benchmarks/bench_hostile.py --fuzz 20000    # also 20,000 fuzzed API requests (tests/fuzzing.py)

Each case runs in a fresh process so its peak RSS is its own (VmHWM, reset after the imports: the
baseline is the same process after importing sketchfind). Cases: sketches through the preprocessing
the API and the CLI use (40 MP JPEG/PNG, a 900 MP PNG bomb, pathological SVG and strokes), thumbnails
of a 40 MP photo at every
size, and a photo folder of hostile names and mislabelled files through ``build_index``.
Results: benchmarks/results/hostile.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent)]  # this checkout, and tests/hostile.py

CASES = {
    "sketch: 40 MP JPEG": "sketch_file('jpg')",
    "sketch: 40 MP PNG with alpha": "sketch_file('png')",
    "sketch: 900 MP PNG bomb": "sketch_bytes(hostile.png_bomb())",
    "sketch: SVG 200k sub-paths": "sketch_bytes(hostile.svg_subpaths())",
    "sketch: SVG 12k sub-paths (under the limits)": "sketch_bytes(hostile.svg_subpaths(12_000))",
    "sketch: SVG 20k elements": "sketch_bytes(hostile.svg_elements())",
    "sketch: SVG billion laughs": "sketch_bytes(hostile.svg_billion_laughs())",
    "sketch: strokes 300k points": "sketch_bytes(json.dumps(json.loads(hostile.many_points())['strokes']).encode())",
    "sketch: strokes 10^400": "sketch_bytes(hostile.BAD_STROKES[0][1].split(': ', 1)[1][:-1].encode())",
    "thumbnails: 40 MP photo, sizes 32..1024": "thumbnails('jpg')",
    "thumbnails: 40 MP PNG photo with alpha, sizes 32..1024": "thumbnails('png')",
    "photo: 40 MP PNG with alpha, indexed (whole decode)": "photo_tensor('png')",
    "index: hostile names + mislabelled files": "index_folder()",
}

_RUNNER = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import sketchfind
from sketchfind.config import PreprocessConfig
from sketchfind.errors import SketchfindError
from sketchfind.preprocess import preprocess_sketch
from tests import hostile
big = {big!r}

def sketch_file(ext):
    return preprocess_sketch(big + '.' + ext, PreprocessConfig())

def sketch_bytes(data):
    return preprocess_sketch(data, PreprocessConfig())

def thumbnails(ext):
    from sketchfind.service.thumbnails import ThumbnailCache
    cache = ThumbnailCache()
    for size in range(32, 1025):
        cache.get(big + '.' + ext, 'h', size)
    return len(cache._items)

def photo_tensor(ext):
    from sketchfind.preprocess import preprocess_photo
    return preprocess_photo(big + '.' + ext, PreprocessConfig())

def index_folder():
    import tempfile, pathlib
    from sketchfind.index import build_index
    from tests.index_helpers import tiny
    root = pathlib.Path(tempfile.mkdtemp())
    hostile.photo_folder(root / 'photos')
    report = build_index([root / 'photos'], root / 'idx', tiny())
    return report.summary()

def hwm_kb():
    status = open('/proc/self/status').read()
    return int(status.split('VmHWM:')[1].split()[0])

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:  # reset the peak to the current RSS (Linux): ru_maxrss can carry a parent's peak through fork + exec
    open('/proc/self/clear_refs', 'w').write('5')
    base = hwm_kb()
except OSError:
    pass
start = time.perf_counter()
try:
    value = {expr}
    outcome = 'ok: ' + (str(tuple(value.shape)) if hasattr(value, 'shape') else str(value)[:80])
except SketchfindError as err:
    outcome = type(err).__name__ + ': ' + str(err)[:120]
seconds = time.perf_counter() - start
try:
    peak = hwm_kb()
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{'seconds': seconds, 'peak_mb': peak / 1024, 'base_mb': base / 1024, 'outcome': outcome}}))
"""


_MAKE_BIG = """
import sys
sys.path.insert(0, {root!r})
from PIL import Image
from tests import hostile
open({big!r} + '.jpg', 'wb').write(hostile.big_jpeg())
image = Image.open({big!r} + '.jpg').convert('RGBA')
image.putpixel((0, 0), (0, 0, 0, 0))
image.save({big!r} + '.png')
"""


def run_case(expr: str, big: str) -> dict:
    code = _RUNNER.format(root=str(HERE.parent), big=big, expr=expr)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode:
        return {"outcome": "CRASH: " + out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz", type=int, default=0, help="also run this many fuzzed API requests")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "hostile")
    args = parser.parse_args()

    from PIL import Image
    from tests import hostile

    from sketchfind.preprocess import DRAWING_LIMITS, MAX_PIXELS

    tmp = Path(tempfile.mkdtemp())
    big = str(tmp / "big40")
    Path(big + ".jpg").write_bytes(hostile.big_jpeg())
    image = Image.open(big + ".jpg").convert("RGBA")
    image.putpixel((0, 0), (0, 0, 0, 0))
    image.save(big + ".png")

    rows = []
    for name, expr in CASES.items():
        result = run_case(expr, big)
        rows.append({"case": name, **result})
        print(f"{name}: {result}", file=sys.stderr, flush=True)
    fuzz = None
    if args.fuzz:
        start = time.perf_counter()
        per_op = max(1, args.fuzz // 8)
        env = {**os.environ, "SKETCHFIND_FUZZ_EXAMPLES": str(per_op), "PYTHONPATH": str(HERE.parent / "src")}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
            cwd=HERE.parent,
            env=env,
            capture_output=True,
            text=True,
        )
        fuzz = {
            "requests": per_op * 8,
            "seconds": round(time.perf_counter() - start, 1),
            "passed": proc.returncode == 0,
            "summary": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:],
        }
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "bounds": {"max_pixels": MAX_PIXELS, **{f"drawing_{k}": v for k, v in DRAWING_LIMITS.items()}},
        "cases": rows,
        "fuzz": fuzz,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Hostile corpus: peak RSS and time per input",
        "",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs, "
        f"load average {', '.join(f'{x:.2f}' for x in result['machine']['load_average'])}.",
        "Each case in its own process; 'base' is the process after importing sketchfind.",
        "",
        "| case | seconds | peak RSS MB | over base MB | outcome |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if "seconds" in row:
            extra = row["peak_mb"] - row["base_mb"]
            lines.append(
                f"| {row['case']} | {row['seconds']:.2f} | {row['peak_mb']:.0f} | {extra:.0f} | "
                f"{row['outcome'].replace('|', '/')} |"
            )
        else:
            lines.append(f"| {row['case']} | | | | {row['outcome']} |")
    if fuzz:
        lines += ["", f"Fuzz: {fuzz['requests']} requests in {fuzz['seconds']} s: {fuzz['summary']}"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
