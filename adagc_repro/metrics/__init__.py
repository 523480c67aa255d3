"""Run metrics that need no torch: spike scores, divergence counts, throughput and MFU."""

from adagc_repro.metrics.spike import (
    SpikeMonitor,
    SpikePreset,
    divergence_events,
    spike_flags,
    spike_score,
    summarize_spikes,
)
from adagc_repro.metrics.throughput import PEAK_FLOPS, mfu, peak_flops, steady_throughput

__all__ = [
    "PEAK_FLOPS",
    "SpikeMonitor",
    "SpikePreset",
    "divergence_events",
    "mfu",
    "peak_flops",
    "spike_flags",
    "spike_score",
    "steady_throughput",
    "summarize_spikes",
]
