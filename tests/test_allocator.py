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
_CHILD = r"""
import ctypes, json, threading
from napari_histoseg.engine.allocator import tune_cpu_allocator
applied = tune_cpu_allocator()
again = tune_cpu_allocator()
import torch

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


def _run_child(flag: str) -> dict:
    env = {**os.environ, "HISTOSEG_MALLOC_TUNING": flag}
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
