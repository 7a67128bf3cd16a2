"""The HTTP side's small parts: the optional bearer token of the user pages, the package version."""

from __future__ import annotations

import functools
import hmac
from typing import Any


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamrec")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def bearer_ok(request: Any, token: str) -> bool:
    """True when no token is configured, or the request carries ``Authorization: Bearer <token>``.

    Constant-time comparison (``hmac.compare_digest``), on bytes so that a non-ASCII header
    cannot raise.
    """
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                                                              token.encode("utf-8"))


def requires_token(token: str) -> Any:
    """A page decorator answering 401 unless :func:`bearer_ok`.

    Outermost, before Faust's ``table_route``: a request without the token is not
    forwarded to the worker that owns the key, and one with it is forwarded with its
    headers (the owner checks the same token).
    """
    def decorate(fun: Any) -> Any:
        @functools.wraps(fun)
        async def checked(web: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            if not bearer_ok(request, token):
                return web.json({"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"})
            return await fun(web, request, *args, **kwargs)
        return checked
    return decorate
