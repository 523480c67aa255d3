"""Tables, plots and reports computed from the plain files under results/ (never imports torch)."""

DEFAULT_SPIKE_PRESET = "olmo2"  # the spike definition tables show by default: the one AdaGC cites (OLMo 2 §3)
