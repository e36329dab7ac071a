"""pinnacle-updates client: verified A/B installs with automatic rollback."""
