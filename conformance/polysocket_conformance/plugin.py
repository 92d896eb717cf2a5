"""pytest plugin entry of the polysocket conformance suite."""
