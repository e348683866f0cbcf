"""The glibc allocator settings for CPU jobs: applied once, switchable off, and large tensors stay in the heap."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

# A child process: the settings are process-wide and cannot be undone. It reports whether they were applied and
# how many bytes glibc holds in mmapped blocks while a 96 MB tensor, allocated in a new thread, is alive.
# With HISTOSEG_TEST_SEGMENT_FIRST=1 it first segments a small image (the engine applies the settings itself).
_CHILD = r"""
import ctypes, json, os, threading
import torch
from napari_histoseg.engine.allocator import tune_cpu_allocator

if os.environ.get("HISTOSEG_TEST_SEGMENT_FIRST") == "1":
    import numpy as np
    from napari_histoseg.engine.infer import InferenceSettings, run, segment
    from napari_histoseg.engine.predictor import BlockPredictor
    from napari_histoseg.engine.resolution import ResolutionPlan
    from napari_histoseg.io.store import ArraySink
    from napari_histoseg.model.resunetpp import ModelConfig, build_model

    net = build_model(ModelConfig.scaled(0.25)).eval()
    image = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    settings = InferenceSettings(block=256, skip_background=False, batch_size=2)
    predictor = BlockPredictor(net, torch.device("cpu"), tile=256, batch_size=2, amp=False)
    result = run(segment(image, predictor, ArraySink((300, 300)), settings, ResolutionPlan(0, 1.0, None)))
    assert sum(result.class_counts) == 300 * 300

applied = tune_cpu_allocator()
again = tune_cpu_allocator()

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
seen = {}

def work():
    before = libc.mallinfo2().hblkhd
    x = torch.ones(24 * 1024 * 1024)  # 96 MB
    seen["mmapped_for_tensor"] = libc.mallinfo2().hblkhd - before
    del x

thread = threading.Thread(target=work)
thread.start()
thread.join()
print(json.dumps({"applied": applied, "again": again, **seen}))
"""


def _run_child(flag: str, segment_first: bool = False) -> dict:
    env = {**os.environ, "HISTOSEG_MALLOC_TUNING": flag, "HISTOSEG_TEST_SEGMENT_FIRST": str(int(segment_first))}
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_tuned_allocator_keeps_large_tensors_in_the_heap():
    tuned = _run_child("1")
    assert tuned["applied"] and tuned["again"]
    assert tuned["mmapped_for_tensor"] == 0


@glibc_only
def test_allocator_left_alone_when_switched_off():
    plain = _run_child("0")
    assert not plain["applied"] and not plain["again"]
    # glibc's default: a 96 MB block is an mmap of its own
    assert plain["mmapped_for_tensor"] >= 96 * 1024 * 1024


@glibc_only
def test_segmentation_keeps_the_tuned_settings():
    # The engine once lowered the mmap threshold to 1 MB for every block, which put the slide path's kernel time
    # back (histoseg demo: 171 s of 240 s); after a segmentation large tensors must still come from the heap.
    after = _run_child("1", segment_first=True)
    assert after["mmapped_for_tensor"] == 0
