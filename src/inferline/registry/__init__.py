"""The model registry: signed bundles, their versions and aliases (see ARCHITECTURE.md)."""
