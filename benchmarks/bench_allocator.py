"""Benchmark of the glibc allocator settings (``engine.allocator``): CPU forward and training step, default vs tuned.

Usage (from the repository root)::

    python benchmarks/bench_allocator.py [--width 1.0] [--batch-size 8] [--tile 256] [--repeats 3] [--no-train]
    python benchmarks/bench_allocator.py --slide 4096 [--width 0.25]   # the whole-slide engine instead

mallopt settings cannot be undone in a process, so each setting runs in a child process of this one invocation
(``HISTOSEG_MALLOC_TUNING=0`` for the baseline); both children run the same seeded model on the same input. Printed
per setting: the forward pass of one batch in the main thread and in a new thread (as napari's worker and dask's
threads run it), one RMSprop training step, each the mean of the repeats after a warm-up run, the peak RSS; then
the ratios default / tuned.

With ``--slide N`` each child instead segments an N x N JPEG BigTIFF of real tissue block by block into a zarr
store, as ``histoseg predict`` does (``bench_engine.child_ours``, batch 8), and a third child runs glibc with a
fixed 1 MB mmap threshold (``MALLOC_MMAP_THRESHOLD_``), the setting the engine applied before it kept the tuned
ones.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time


def _mean_time(fn, repeats: int) -> float:
    fn()  # warm-up: first allocations, oneDNN primitive creation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def child(args: argparse.Namespace) -> dict:
    from napari_histoseg.engine.allocator import tune_cpu_allocator

    applied = tune_cpu_allocator()  # before torch starts its threads, as the CLI does
    if args.slide:  # bench_engine's run of the engine: JPEG BigTIFF -> zarr store, batch 8, no tissue skipping
        from bench_engine import child_ours

        return {"tuned": applied, **child_ours(args.slide, args.width, "tiff", "cpu")}
    import torch

    from napari_histoseg.model.resunetpp import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig.scaled(args.width))
    x = torch.rand(args.batch_size, 3, args.tile, args.tile)

    def forward():
        with torch.inference_mode():
            model.eval()(x)

    def in_thread():
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("t", _mean_time(forward, args.repeats)))
        thread.start()
        thread.join()
        return result["t"]

    out = {"tuned": applied, "forward_s": _mean_time(forward, args.repeats), "forward_thread_s": in_thread()}
    if args.train:
        y = torch.randint(0, 4, (args.batch_size, args.tile, args.tile))
        optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4)

        def step():
            model.train()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

        out["train_step_s"] = _mean_time(step, args.repeats)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-train", dest="train", action="store_false")
    parser.add_argument("--slide", type=int, default=0, help="segment a JPEG BigTIFF of this size (px) instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    settings = [("default", {"HISTOSEG_MALLOC_TUNING": "0"}), ("tuned", {"HISTOSEG_MALLOC_TUNING": "1"})]
    if args.slide:
        from bench_engine import jpeg_tiff

        jpeg_tiff(args.slide)  # built once, outside the timed children
        settings.insert(1, ("1 MB mmap", {"HISTOSEG_MALLOC_TUNING": "0", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}))
    results = {}
    for name, env in settings:
        cmd = [sys.executable, __file__, "--child", *sys.argv[1:]]
        done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
        results[name] = r = json.loads(done.stdout.strip().splitlines()[-1])
        if args.slide:
            line = f"{name:10s} (tuned: {r['tuned']}): {args.slide} px slide, {r['windows']} windows"
            line += f", {r['windows'] / r['seconds']:.2f} windows/s"
        else:
            line = f"{name:8s} (applied: {r['tuned']}): forward {r['forward_s']:.2f} s"
            line += f", in a thread {r['forward_thread_s']:.2f} s"
            if "train_step_s" in r:
                line += f", training step {r['train_step_s']:.2f} s"
        print(f"{line}, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    tuned = results["tuned"]
    if args.slide:
        for name in [n for n in results if n != "tuned"]:
            print(f"windows/s tuned / {name}: {results[name]['seconds'] / tuned['seconds']:.2f}x")
        return
    base = results["default"]
    keys = [k for k in ("forward_s", "forward_thread_s", "train_step_s") if k in base]
    print("ratio default / tuned: " + ", ".join(f"{k[:-2]} {base[k] / tuned[k]:.2f}x" for k in keys))


if __name__ == "__main__":
    main()
