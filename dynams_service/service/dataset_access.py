"""Which dataset URIs a selector may open: the operator's roots and schemes.

A client names its dataset by URI and the selector opens it, so the URI is untrusted
input: it must not pick the endpoint the server talks to (``?endpoint_override=…``,
``hdfs://any-host``), carry credentials, or reach outside the roots the operator allows
(``dynams serve --dataset-root URI``).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from urllib.parse import urlsplit

from ..core.data.manifest import filesystem_schemes

__all__ = ["DatasetAccess", "DatasetAccessDenied", "MalformedDatasetURI", "DEFAULT_SCHEMES"]

# Object stores whose endpoint is fixed by the server's own configuration; local paths.
DEFAULT_SCHEMES = ("file", "s3", "gs", "gcs")


class DatasetAccessDenied(ValueError):
    """The URI is outside what the operator allows; the message says which rule."""


class MalformedDatasetURI(DatasetAccessDenied):
    """The URI is not one at all (a NUL byte): a bad argument rather than a denial."""


class DatasetAccess:
    """Allowed dataset URIs: ``schemes`` (local paths are ``file``) and those registered with
    ``register_filesystem``, and under ``roots``
    when any are given. Query strings, fragments and credentials are never allowed.

    Example:
        >>> access = DatasetAccess(roots=["/data", "s3://team-bucket/datasets"])
        >>> access.check("/data/fashion-mnist/train")
        >>> access.check("s3://other-bucket/x")  # doctest: +SKIP
        DatasetAccessDenied: ... not under an allowed dataset root
    """

    def __init__(self, roots: Sequence[str] = (), schemes: Sequence[str] = DEFAULT_SCHEMES
                 ) -> None:
        self.schemes = tuple(schemes)
        self.roots = tuple(self._normalise(r, is_root=True) for r in roots)

    def check(self, uri: str) -> None:
        """Raise DatasetAccessDenied unless the operator allows opening ``uri``."""
        normal = self._normalise(uri)
        if self.roots and not any(normal == r or normal.startswith(r.rstrip("/") + "/")
                                  for r in self.roots):
            raise DatasetAccessDenied(f"dataset {_shown(uri)} is not under an allowed dataset "
                                      f"root ({', '.join(self.roots)})")

    def _normalise(self, uri: str, is_root: bool = False) -> str:
        """``scheme://netloc/path`` with the path normalised; local paths resolved."""
        if "\0" in uri:
            raise MalformedDatasetURI("dataset URI contains a NUL byte")
        if "://" not in uri:
            if "file" not in self.schemes:
                raise DatasetAccessDenied("local dataset paths are not allowed here")
            # os.path.expanduser leaves an unknown ~user as it is (Path's raises)
            path = os.path.realpath(os.path.expanduser(uri))  # symlinks cannot escape a root
            return f"file://{path}"
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        allowed = (*self.schemes, *filesystem_schemes())  # the operator registered these
        if scheme not in allowed:
            raise DatasetAccessDenied(f"dataset URI scheme {scheme!r} is not allowed; allowed: "
                                      f"{', '.join(allowed)}")
        if parts.query or parts.fragment:
            raise DatasetAccessDenied("dataset URIs may not carry options (?…): endpoints, "
                                      "schemes and credentials are the selector's own settings")
        if "@" in parts.netloc or parts.username or parts.password:
            raise DatasetAccessDenied("dataset URIs may not carry credentials")
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise DatasetAccessDenied("file:// URIs name a local path, not a host")
            return f"file://{os.path.realpath(parts.path)}"
        if ":" in parts.netloc:
            raise DatasetAccessDenied("dataset URIs may not name a port")
        path = posixpath.normpath("/" + parts.path.lstrip("/")) if parts.path else ""
        if path == "/":
            path = ""
        return f"{scheme}://{parts.netloc.lower()}{path}"


def _shown(uri: str) -> str:
    return repr(uri[:200])
