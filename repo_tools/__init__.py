"""pinnacle-updates publishing library and the pinnacle-release CLI."""
