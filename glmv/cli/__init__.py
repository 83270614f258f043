"""The `glmv` command: serve, download, make-tiny-model (and more as they land)."""
