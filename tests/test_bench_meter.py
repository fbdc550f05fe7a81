"""The benchmarks' CPU memory meter (bench/benchlib.py, RSSMeter) reads a call's peak, not its heap's history."""
import ctypes
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import benchlib as bl  # noqa: E402

MiB = 2**20


def _meter_works():
    try:
        return os.path.exists("/proc/self/clear_refs") and hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _meter_works(), reason="needs Linux's clear_refs and glibc's mallinfo2")
def test_rss_meter_reads_the_peak_whatever_free_chunks_the_heap_holds():
    """Free chunks of 8 and 10 MiB in the middle of the heap: a call that allocates and frees 8 MiB, then 9 MiB,
    has a peak of 9 MiB. Without the meter's held chunks the 8 MiB block lands on the 8 MiB chunk, stays resident
    when freed, the 9 MiB one lands on the 10 MiB chunk, and the reading is their sum."""
    meter = bl.RSSMeter()  # pins the timing thresholds: blocks under 32 MiB come from the heap
    floats = MiB // 4
    first, fence1 = torch.empty(8 * floats), torch.empty(16)
    second, fence2 = torch.empty(10 * floats), torch.empty(16)
    del first, second
    readings = []
    for _ in range(3):
        meter.start()
        a = torch.ones(8 * floats)
        del a
        b = torch.ones(9 * floats)
        del b
        readings.append(meter.stop())
    del fence1, fence2
    assert all(8.5 * MiB <= r < 10 * MiB for r in readings), [r / MiB for r in readings]
