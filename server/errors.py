"""Every failure becomes a JSON ``{"error": {status, message, details?}}``, never a traceback."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.models import ErrorBody
from server.store import CollectionError, NotReady

log = logging.getLogger("binsearch.server")


def error_response(
    status: int,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The one error shape of the API."""
    body: dict[str, Any] = {"status": status, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _plain(value: Any) -> Any:
    """Validation error details as plain JSON (pydantic puts exceptions in ``ctx``)."""
    return json.loads(json.dumps(value, default=str))


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        msg = str(e.get("msg", "invalid"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    details = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(
            400, "the body is not valid JSON: " + _describe(errors), _plain(details)
        )
    return error_response(422, _describe(errors), _plain(details))


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app answers on this request's path, and OPTIONS."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    ]
    return [*allowed, "OPTIONS"]


async def _http(request: Request, exc: StarletteHTTPException) -> Response:
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        # Starlette's Allow names only the first route on the path (GET for
        # /documents/{id}): name every route's methods, and answer OPTIONS.
        allow = ", ".join(allowed_methods(request))
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": allow})
        return error_response(
            405, f"{request.method} is not allowed here; use {allow}", None, {"Allow": allow}
        )
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        # json.loads gives up near 1000 levels; metadata allows far fewer.
        from server.models import MAX_METADATA_DEPTH

        return error_response(
            422, f"the body is nested too deeply (metadata allows {MAX_METADATA_DEPTH} levels)"
        )
    detail = str(exc.detail)
    return error_response(
        exc.status_code, without_paths(detail) if exc.status_code >= 500 else detail, None, headers
    )


async def _collection_error(request: Request, exc: CollectionError) -> JSONResponse:
    return error_response(422, str(exc))


# An absolute POSIX path: a "/" that does not follow a word character, a dot or
# another path character, up to whitespace, a quote or punctuation.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/[^\s'\"`,;:()\[\]{}<>]+")


def without_paths(message: str) -> str:
    """``message`` with every absolute path cut to its last part: ``.../index``.

    Load errors name the collection directory; clients (authenticated or not) have
    no use for the server's file layout, and the log keeps the full message.
    """
    return _ABSOLUTE_PATH.sub(lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], message)


async def _not_ready(request: Request, exc: NotReady) -> JSONResponse:
    return error_response(503, without_paths(str(exc)), headers={"Retry-After": "1"})


def _internal_error(request: Request | Scope, exc: BaseException) -> JSONResponse:
    # Logged with its traceback for the operator; the client gets one line.
    path = request.url.path if isinstance(request, Request) else request.get("path")
    log.error(json.dumps({"event": "unhandled_error", "path": path}), exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return _internal_error(request, exc)


class CatchUnexpected:
    """Answer an unexpected exception with the JSON 500 here, and let it go no further.

    Starlette's outermost error middleware re-raises after sending its 500, and
    uvicorn then closes the keep-alive connection and prints a plain traceback.
    Inside it, this answers the same 500 and keeps the connection for the
    client's next request. An error after the response started cannot be
    answered any more and still propagates.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            await _internal_error(scope, exc)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type to the JSON error shape.

    Also adds :class:`CatchUnexpected`; called before the app's other
    middleware is added, so it sits innermost and the request log sees its 500s.
    """
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(CollectionError, _collection_error)
    app.add_exception_handler(NotReady, _not_ready)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(CatchUnexpected)


class _TooLarge(HTTPException):
    """Raised from inside body reading; FastAPI passes HTTPExceptions through unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by header or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(scope, receive, send)
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"the request body is larger than {self.limit} bytes")
        await response(scope, receive, send)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can return."""
    text = {
        400: "malformed JSON",
        401: "missing or wrong API key",
        404: "no such document",
        413: "body too large",
        422: "invalid input (what and where in the message)",
        503: "the index is not loaded (yet), or text encoding is unavailable",
    }
    return {s: {"model": ErrorBody, "description": text[s]} for s in statuses}
