"""Reading untrusted JSON field by field, and the refusals the API answers with problem+json."""

from __future__ import annotations

from collections.abc import Mapping

from mailfold.runtime.problems import FieldError as FieldError
from mailfold.runtime.problems import HttpProblem


class Refused(HttpProblem):
    """A request the API refuses, with the HTTP status, a problem type and the fields at fault."""

    status: int = 422
    slug: str = "invalid-fields"
    title: str = "Some fields are invalid"


class Invalid(Refused):
    """422: the request is well-formed HTTP but its fields are wrong."""


class TooLarge(Refused):
    """413: over a size limit."""

    status = 413
    slug = "too-large"
    title = "Over a size limit"


class NotFound(Refused):
    """404: the resource does not exist."""

    status = 404
    slug = "not-found"
    title = "Not found"


class KeyReused(Refused):
    """422: an Idempotency-Key seen before, with a different payload."""

    slug = "idempotency-key-reused"
    title = "Idempotency-Key reused with a different payload"


class BadKey(Refused):
    """400: an Idempotency-Key header that is not a usable key."""

    status = 400
    slug = "bad-idempotency-key"
    title = "Bad Idempotency-Key header"


class Fields:
    """A decoded JSON object read field by field; every error is collected, then raised at once."""

    _silent = False  # a nested value that is not an object: its fields are not each missing

    def __init__(self, data: object, *, allowed: frozenset[str], prefix: str = "") -> None:
        self.errors: list[FieldError] = []
        self.size_errors: list[FieldError] = []
        self._prefix = prefix
        if isinstance(data, Mapping):
            self._data: Mapping[str, object] = data
            for name in data:
                if name not in allowed:
                    self.fail(str(name), "unknown field")
        else:
            where = prefix.rstrip(".") or "body"
            if not prefix:
                raise Invalid([FieldError(where, "must be a JSON object")])
            self._data = {}
            self.errors.append(FieldError(where, "must be a JSON object"))
            self._silent = True

    def path(self, name: str) -> str:
        """The full path of a field of this object."""
        return f"{self._prefix}{name}"

    def fail(self, name: str, message: str) -> None:
        """Record an error on a field of this object."""
        if self._silent:
            return
        self.errors.append(FieldError(self.path(name), message))

    def too_large(self, name: str, message: str) -> None:
        """Record a size limit crossed by a field of this object."""
        self.size_errors.append(FieldError(self.path(name), message))

    def has(self, name: str) -> bool:
        """True when the field is present and not null."""
        return self._data.get(name) is not None

    def failed(self, *names: str) -> bool:
        """True when one of these fields already has an error."""
        paths = {self.path(n) for n in names}
        return any(e.field in paths for e in self.errors)

    def raw(self, name: str) -> object:
        """The field's value as decoded (None when absent)."""
        return self._data.get(name)

    def string(
        self,
        name: str,
        *,
        required: bool = False,
        max_length: int = 10_000,
        single_line: bool = False,
    ) -> str | None:
        """A string field (None when absent); `single_line` refuses CR, LF and NUL."""
        value = self._data.get(name)
        if value is None:
            if required:
                self.fail(name, "is required")
            return None
        if not isinstance(value, str):
            self.fail(name, "must be a string")
            return None
        if required and not value.strip():
            self.fail(name, "must not be empty")
            return None
        if len(value) > max_length:
            self.fail(name, f"must be at most {max_length} characters")
            return None
        if single_line and any(c in value for c in "\r\n\x00"):
            self.fail(name, "must be one line (no CR, LF or NUL)")
            return None
        return value

    def integer(self, name: str, *, minimum: int, maximum: int) -> int | None:
        """An integer field within bounds (None when absent)."""
        value = self._data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, "must be an integer")
            return None
        if not minimum <= value <= maximum:
            self.fail(name, f"must be between {minimum} and {maximum}")
            return None
        return value

    def items(self, name: str, *, max_items: int) -> list[object] | None:
        """A list field (None when absent)."""
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, list):
            self.fail(name, "must be a list")
            return None
        if len(value) > max_items:
            self.fail(name, f"must have at most {max_items} items")
            return None
        return value

    def strings(self, name: str, *, max_items: int, max_length: int = 1000) -> list[str] | None:
        """A list of one-line strings (None when absent); each bad item is named by its index."""
        values = self.items(name, max_items=max_items)
        if values is None:
            return None
        good: list[str] = []
        for i, value in enumerate(values):
            if not isinstance(value, str):
                self.fail(f"{name}[{i}]", "must be a string")
            elif len(value) > max_length or any(c in value for c in "\r\n\x00"):
                self.fail(f"{name}[{i}]", f"must be one line of at most {max_length} characters")
            else:
                good.append(value)
        return good

    def merge(self, child: Fields) -> None:
        """Take over the errors of a nested object read with its own Fields."""
        self.errors.extend(child.errors)
        self.size_errors.extend(child.size_errors)

    def check(self) -> None:
        """Raise Invalid (422) for field errors, else TooLarge (413) for crossed size limits."""
        if self.errors:
            raise Invalid(self.errors)
        if self.size_errors:
            raise TooLarge(self.size_errors)
