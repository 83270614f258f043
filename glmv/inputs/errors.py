"""InvalidInputError: the one exception for input a user can fix, carrying the HTTP status doors answer with."""

from __future__ import annotations


class InvalidInputError(ValueError):
    """Bad input a user can fix. `status` is the HTTP code doors answer with (400, 413, 415);
    `param` names the field (e.g. "messages[0].content[1]"); `code` is a short machine-readable reason."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code
