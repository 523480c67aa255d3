"""Run metrics that need no torch: spike scores, divergence counts, throughput and MFU."""

from adagc_repro.metrics.spike import (
    SpikeMonitor,
    SpikePreset,
    divergence_events,
    spike_flags,
    spike_score,
    summarize_spikes,
)
from adagc_repro.metrics.throughput import PEAK_FLOPS, StepTimer, mfu, peak_flops

__all__ = [
    "PEAK_FLOPS",
    "SpikeMonitor",
    "SpikePreset",
    "StepTimer",
    "divergence_events",
    "mfu",
    "peak_flops",
    "spike_flags",
    "spike_score",
    "summarize_spikes",
]
