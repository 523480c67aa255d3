"""Tables, plots and reports computed from the plain files under results/ (never imports torch)."""
