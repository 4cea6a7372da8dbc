"""The editing layer: the editor contract and template, the editor registry, the session and bundles."""
