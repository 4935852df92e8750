"""`make bench-io`: reading, validating and writing at scale, with the instant fake engine.

N synthetic requests (and N/10, to show that peak memory does not grow with the input) go
through `pipeline validate`, `pipeline estimate` and `pipeline run --engine fake` (in prefix
order, the default, and in input order), each as its own process; wall time, rows/s and the peak
resident memory of the whole process tree (sampled every 0.2 s) are reported.

Images: a folder of PNGs listed in a CSV goes through `pipeline validate` as a template job with
`--template-image` (every image read, decoded and checked; intake/images.py) with 1 thread and
with 8, and the cost of handing one decoded image to the engine process (pickled across the pipe)
is measured for the two forms vLLM takes: a data: URI of the checked bytes and a PIL image. Each
image is decoded twice, by intake's check and by vLLM in the engine process: the cost of each
decode (and of Pillow's `verify`, the lighter check) is measured per image, for the PNGs and for
the same pixels as JPEG.

Prefix order (bench/order_stream.py): on a shuffled documents x questions file, the share of
prompt tokens reusable in the order emitted at several look-ahead sizes against the full sort,
and `pipeline run --engine fake` in each order with its time to first request.

    python bench/io_scale.py                      # 100k and 1M requests, 2,000 images
    python bench/io_scale.py --requests 20000 --images 500 --order-requests 20000 --order-study 20000  # quick
    python bench/io_scale.py --skip-requests --images 0 --order-requests 10000000 --order-study 10000000 \
        --order-windows 100000 --order-first-only sorted,input    # the 10M prefix-order case alone
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import order_stream
from harness import (
    WORK,
    base_env,
    envelope,
    machine_line,
    publish,
    python,
    run_measured,
    table,
    versions_line,
    write_requests,
)

MIB = 2**20


def steps(model: str, requests: Path, out: Path) -> dict[str, list[Any]]:
    pipeline = [python(), "-m", "pipeline"]
    return {
        "validate": [*pipeline, "validate", requests],
        "estimate": [*pipeline, "estimate", "-m", model, "--json", requests],
        **{f"run (fake engine, --order {how})": [*pipeline, "run", requests, "-o", out / how, "--engine", "fake",
                                                 "-m", model, "-q", "--order", how] for how in ("prefix", "input")},
    }


def measure_size(n: int, model: str, work: Path, keep: bool) -> list[dict[str, Any]]:
    t0 = time.monotonic()
    requests = write_requests(work / f"requests-{n}.jsonl", n, max_tokens=16)
    print(f"{n} requests written in {time.monotonic() - t0:.1f} s ({requests.stat().st_size / MIB:.0f} MiB)",
          file=sys.stderr)
    env = base_env(0)
    results = []
    for name, cmd in steps(model, requests, work / f"out-{n}").items():
        m = run_measured(cmd, log=work / f"log-{n}-{name.split()[0]}-{name.split()[-1].rstrip(')')}.txt", env=env)
        row: dict[str, Any] = {"step": name, "requests": n, "input_bytes": requests.stat().st_size, **m.as_dict()}
        if m.rc != 0 and name == "estimate":
            row["status"] = "skipped: the command failed (" + (m.tail(1).strip() or f"exit {m.rc}")[:200] + ")"
        elif m.rc != 0 and not (name == "validate" and m.rc == 1):
            row["status"] = f"FAILED (exit {m.rc}): {m.tail(3)}"
        else:
            row["status"] = "ok"
            row["rows_per_s"] = n / m.wall_s
        if name.startswith("run") and m.rc == 0:
            report = json.loads((work / f"out-{n}" / name.split()[-1].rstrip(")") / "_report.json").read_text())
            row["rows_written"] = report["requests"]
            if report["requests"] != n:
                row["status"] = f"wrong: {report['requests']} rows written for {n} requests"
        print(f"  {name} x {n}: {m.wall_s:.1f} s, peak RSS {m.peak_rss_bytes / MIB:.0f} MiB, {row['status']}",
              file=sys.stderr)
        results.append(row)
    if not keep:
        requests.unlink()
        shutil.rmtree(work / f"out-{n}", ignore_errors=True)
    return results


def write_images(folder: Path, n: int, size: int = 384) -> Path:
    """n PNGs of `size` x `size` (a gradient with noise: photo-like compression) and their CSV."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, size, dtype=np.float32)
    for i in range(n):
        noise = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
        pixels = (ramp[None, :, None] + ramp[:, None, None] * (i % 5) / 5 + noise).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img-{i}.png")
    listing = folder / "images.csv"
    listing.write_text("name,file\n" + "".join(f"img-{i},img-{i}.png\n" for i in range(n)))
    return listing


def measure_images(n: int, work: Path) -> list[dict[str, Any]]:
    """Fetch + decode + check throughput through `pipeline validate`, 1 thread against 8."""
    listing = write_images(work / "images", n)
    total = sum(f.stat().st_size for f in listing.parent.glob("*.png"))
    rows = []
    for threads in (1, 8):
        cmd = [python(), "-m", "pipeline", "validate", listing, "--template-user", "Caption {{ name }}",
               "--template-image", "file", "--image-workers", str(threads),
               "--allowed-local-media-path", listing.parent]
        m = run_measured(cmd, log=work / f"log-images-{threads}.txt", env=base_env(0))
        rows.append({"step": f"validate, {threads} image thread{'s' if threads > 1 else ''}", "images": n,
                     "image_bytes": total, **m.as_dict(), "images_per_s": n / m.wall_s,
                     "status": "ok" if m.rc == 0 else f"FAILED (exit {m.rc}): {m.tail(3)}"})
        print(f"  images x {n}, {threads} threads: {m.wall_s:.1f} s ({n / m.wall_s:.0f} images/s)", file=sys.stderr)
    return rows


def pipe_cost(listing: Path) -> list[dict[str, Any]]:
    """Bytes and seconds to pickle one image for the engine process: data URI vs PIL image."""
    import base64
    import pickle

    from PIL import Image

    data = next(listing.parent.glob("*.png")).read_bytes()
    forms = {"data: URI (base64 of the checked bytes)": "data:image/png;base64," + base64.b64encode(data).decode(),
             "PIL image (decoded pixels)": Image.open(listing.parent / "img-0.png").convert("RGB")}
    out = []
    for name, value in forms.items():
        t0, reps = time.perf_counter(), 200
        for _ in range(reps):
            blob = pickle.dumps({"type": "image_url", "image": value})
            pickle.loads(blob)
        out.append({"form": name, "bytes": len(blob), "ms_per_image": (time.perf_counter() - t0) * 1000 / reps})
    return out


def decode_cost(listing: Path) -> list[dict[str, Any]]:
    """Milliseconds per image: intake's check (a full decode), Pillow's `verify` (the lighter check,
    a no-op for JPEG) and vLLM's own decode in the engine (`ImageMediaIO.load_bytes`)."""
    import io

    from PIL import Image

    from pipeline.intake.images import check

    png = (listing.parent / "img-0.png").read_bytes()
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, "JPEG", quality=90)

    def verify(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()

    steps = {"intake check (full decode)": lambda d: check(d, "p"), "Pillow verify": verify}
    try:
        from vllm.multimodal.media.image import ImageMediaIO

        steps["vLLM's decode in the engine"] = ImageMediaIO(image_mode="RGB").load_bytes
    except ImportError:  # no engine installed: the two checks only
        pass
    out = []
    for name, data in (("PNG", png), ("JPEG q90", buf.getvalue())):
        row: dict[str, Any] = {"image": f"{name} {Image.open(io.BytesIO(png)).size}", "bytes": len(data)}
        for step, fn in steps.items():
            fn(data)
            t0, reps = time.perf_counter(), 50
            for _ in range(reps):
                fn(data)
            row[step] = (time.perf_counter() - t0) * 1000 / reps
        out.append(row)
    return out


def growth(runs: list[dict[str, Any]], sizes: list[int]) -> dict[str, float | None]:
    """Peak RSS at the largest size over peak RSS at the smallest, per step."""
    out = {}
    for step in dict.fromkeys(r["step"] for r in runs):
        by = {r["requests"]: r for r in runs if r["step"] == step and r["status"] == "ok"}
        small, big = by.get(sizes[0]), by.get(sizes[-1])
        out[step] = big["peak_rss_bytes"] / small["peak_rss_bytes"] if small and big and len(sizes) > 1 else None
    return out


def images_markdown(result: dict[str, Any]) -> list[str]:
    if not result.get("images"):
        return []
    rows = [[r["step"], r["images"], r["image_bytes"] / MIB, r["wall_s"], r["images_per_s"],
             r["image_bytes"] / MIB / r["wall_s"], r["peak_rss_bytes"] / MIB, r["status"]] for r in result["images"]]
    pipe = [[p["form"], p["bytes"], p["ms_per_image"]] for p in result["pipe"]]
    return [
        "## Images: read, decode and check (template job over a CSV of PNG paths)", "",
        table(["step", "images", "image MiB", "wall s", "images/s", "MiB/s", "peak RSS MiB", "status"], rows), "",
        "Handing one image to the engine process (pickle out and back, as the pipe does):", "",
        table(["form", "bytes", "ms per image"], pipe), "",
        *decode_markdown(result.get("decode") or []),
    ]


def decode_markdown(decode: list[dict[str, Any]]) -> list[str]:
    if not decode:
        return []
    steps = [k for k in decode[0] if k not in ("image", "bytes")]
    return ["Decoding one image, ms (intake's check runs on the image threads ahead of the engine; vLLM "
            "decodes again in the engine process):", "",
            table(["image", "bytes", *steps], [[d["image"], d["bytes"], *(d[k] for k in steps)] for d in decode]), ""]


def markdown(result: dict[str, Any]) -> str:
    rows = [[r["step"], r["requests"], r["input_bytes"] / MIB, r["wall_s"], r.get("rows_per_s"),
             r["peak_rss_bytes"] / MIB, r["load_before"], r["status"]] for r in result["runs"]]
    sizes = result["settings"]["sizes"]
    grow = ", ".join(f"{step} {g:.2f}x" for step, g in result["peak_rss_growth"].items() if g is not None)
    head = [
        "# I/O and scale benchmark (fake instant engine)",
        "",
        *([f"**{result['note']}**", ""] if result.get("note") else []),
        f"- When: {result['date']} (UTC); total benchmark time {result['bench_seconds'] / 60:.1f} min",
        f"- Machine: {machine_line(result['machine'])}",
        f"- Versions: {versions_line(result['versions'])}",
    ]
    if not result["runs"]:  # --skip-requests
        return "\n".join([*head, "", *order_stream.markdown(result), *images_markdown(result)])
    return "\n".join([
        *head,
        f"- Input: synthetic OpenAI Batch JSONL (chat requests, ~{result['settings']['bytes_per_request']:.0f} "
        f"bytes each), model `{result['settings']['model']}` for estimate and run",
        "",
        table(["step", "requests", "input MiB", "wall s", "rows/s", "peak RSS MiB (process tree)", "load before",
               "status"], rows),
        "",
        f"Peak memory at {sizes[-1]:,} vs {sizes[0]:,} requests ({sizes[-1] // sizes[0]}x the input): "
        + (grow or "not measured") + ".",
        "",
        "Wall time is the whole process (start-up included); rows/s = requests / wall time. Peak RSS is the "
        "largest sum of resident memory over the command's process tree (main process and engine worker) "
        "in samples every 0.2 s. See bench/README.md.",
        "",
        *order_stream.markdown(result),
        *images_markdown(result),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--requests", type=int, default=1_000_000,
                        help="The large size; the small one is a tenth of it (default 1,000,000).")
    parser.add_argument("--model", default="smollm2", help="Model for estimate and run (tokenizer only).")
    parser.add_argument("--images", type=int, default=2000, help="PNGs for the images case (0: skip it).")
    parser.add_argument("--skip-requests", action="store_true", help="Run the images case only.")
    parser.add_argument("--order-requests", type=int, nargs="*", default=[1_000_000],
                        help="Sizes of the shuffled documents x questions file run in each --order (default 1,000,000; "
                        "none: skip).")
    parser.add_argument("--order-study", type=int, default=1_000_000,
                        help="Requests of the in-process look-ahead study (default 1,000,000; 0: skip).")
    parser.add_argument("--order-windows", default="10000,100000",
                        help="Look-ahead sizes (--order-buffer) of the study, comma-separated (default 10000,100000).")
    parser.add_argument("--order-study-kinds", default=",".join(order_stream.STUDY_KINDS),
                        help="Orders of the study: input, hold (look-ahead holding back half), plain (sorted windows), "
                        "sorted (default: all).")
    parser.add_argument("--order-questions", type=int, default=20, help="Questions per document (default 20).")
    parser.add_argument("--order-run-orders", default=",".join(order_stream.ORDERS),
                        help="The --order values run (default prefix,sorted,input).")
    parser.add_argument("--order-input", type=Path, help="With one --order-requests N: an N-line documents file "
                        "already written, used instead of writing one (kept).")
    parser.add_argument("--order-first-only", default="",
                        help="Orders whose run is stopped at its first request (comma-separated, e.g. sorted).")
    parser.add_argument("--note", help="A line to print above the results, e.g. 'small trial run'.")
    parser.add_argument("--keep", action="store_true", help=f"Keep request files, outputs and logs under {WORK}.")
    args = parser.parse_args()

    started = time.monotonic()
    work = WORK / f"io-{time.strftime('%Y%m%d-%H%M%S')}"
    sizes = sorted({max(1, args.requests // 10), args.requests})
    runs = [] if args.skip_requests else [r for n in sizes for r in measure_size(n, args.model, work, args.keep)]
    windows = tuple(int(w) for w in args.order_windows.split(",") if w)
    kinds = tuple(args.order_study_kinds.split(","))
    order_study = order_stream.study(args.order_study, args.order_questions, windows, kinds) if args.order_study else []
    first_only = tuple(filter(None, args.order_first_only.split(",")))
    order_runs = [r for n in args.order_requests
                  for r in order_stream.runs(n, args.order_questions, args.model, work, first_only,
                                             tuple(args.order_run_orders.split(",")), args.order_input)]
    images = measure_images(args.images, work) if args.images else []
    result = {
        **envelope("io_scale", args.note, started),
        "settings": {"sizes": sizes, "model": args.model,
                     "bytes_per_request": runs[-1]["input_bytes"] / sizes[-1] if runs else None},
        "peak_rss_growth": growth(runs, sizes),
        "runs": runs,
        "order_study": order_study,
        "order_runs": order_runs,
        "images": images,
        "pipe": pipe_cost(work / "images" / "images.csv") if images else [],
        "decode": decode_cost(work / "images" / "images.csv") if images else [],
    }
    # the order case alone (e.g. 10M requests): its own table
    latest = ("io_latest.md" if runs or images else
              f"io_order_{max([*args.order_requests, args.order_study])}{'' if order_runs else '_study'}_latest.md")
    publish("io", result, markdown(result), latest, work, args.keep)


if __name__ == "__main__":
    main()
