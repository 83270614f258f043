"""The web chat page: a self-contained HTML/JS/CSS client of the server's own /v1 API (see routes.mount_ui)."""
