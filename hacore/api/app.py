"""The REST API's routing, authentication and error mapping: :class:`ApiApp` turns a
:class:`~hacore.api.messages.Request` into a :class:`~hacore.api.messages.Response` without touching
sockets (:mod:`hacore.api.transport` does that).

The handlers are grouped by what they serve (:mod:`hacore.api.probe_routes`,
:mod:`hacore.api.view_routes`, :mod:`hacore.api.operation_routes`); here each request meets
its route, its credentials are checked against the route's least role, and an error the agent
raises becomes the HTTP status :func:`hacore.api.errors.status_for` gives it.
"""

from __future__ import annotations

import logging
import math
import re

import attrs

from hacore.api.auth import JOIN_TOKEN_USER, Authenticator, Role, parse_basic
from hacore.api.errors import (
    AuthenticationError,
    ForbiddenError,
    HttpsRequiredError,
    TooManyRequestsError,
    UnsupportedMediaTypeError,
    status_for,
)
from hacore.api.facade import AgentFacade
from hacore.api.limits import AttemptLimiter, Throttle
from hacore.api.messages import JSON, PlainHttp, Request, Response, error_response, json_object
from hacore.api.operation_routes import OperationRoutes
from hacore.api.probe_routes import PROBES, ProbeRoutes
from hacore.api.routes import Handler, Route
from hacore.api.view_routes import ViewRoutes
from hacore.config.node import ApiSettings
from hacore.errors import HacoreError

logger = logging.getLogger(__name__)

REALM = 'Basic realm="hacore"'
INTERNAL_ERROR = "internal error in the hacore agent; its log has the details"
#: password checks that may wait for the one running (more get a 503), and for how long
AUTH_MAX_WAITING = 4
AUTH_WAIT_TIMEOUT = 5.0


class ApiApp:
    """The routes, authentication and error mapping, independent of the transport."""

    def __init__(self, facade: AgentFacade, settings: ApiSettings) -> None:
        self.facade = facade
        #: outlives credential changes, so swapping them does not reset a client's failures
        self._attempts = AttemptLimiter()
        #: failed join tokens, per address: a budget of its own, so a joiner's retries and
        #: an operator's mistyped password do not spend each other's
        self._join_attempts = AttemptLimiter()
        self._join_logged = Throttle()
        self.set_settings(settings)
        self._plain: tuple[PlainHttp, str] = (PlainHttp.ALL, "")
        views, operations = ViewRoutes(facade), OperationRoutes(facade)
        self._routes = [
            *ProbeRoutes(facade).routes(),
            *views.routes(),
            *operations.routes(),
            Route(
                re.compile("/nodes/(?P<name>[^/]+)"),
                {"GET": views.node, "DELETE": operations.remove},
            ),
        ]

    def set_settings(self, settings: ApiSettings) -> None:
        """Swap the credentials in place (``cluster start`` creates them while serving)."""
        authenticator = Authenticator(
            settings.auth,
            users=settings.users,
            max_waiting=AUTH_MAX_WAITING,
            wait_timeout=AUTH_WAIT_TIMEOUT,
            attempts=self._attempts,
        )
        self._auth_state = (settings, authenticator)

    def set_plain(self, plain: PlainHttp, https_url: str) -> None:
        """What requests that did not come over TLS may do (see :class:`PlainHttp`)."""
        self._plain = (plain, https_url)

    def immediate(self, req: Request) -> bool:
        """True when answering ``req`` cannot block: a probe from the cached snapshot whose
        credentials, if it needs any, cost no hashing. The transport answers those on its own
        thread and sends the rest to its workers."""
        path = req.path.rstrip("/") or "/"
        if path not in PROBES:
            return False
        settings, authenticator = self._auth_state
        return not settings.status_requires_auth or authenticator.known(
            req.headers.get("authorization")
        )

    def respond(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if match is not None:
                break
        else:
            return error_response(404, f"no such endpoint: {req.method} {path}")
        if not req.secure:
            refused = self._plain_refusal(route, path)
            if refused is not None:
                return refused
        handler = route.methods.get(req.method)
        if handler is None and req.method == "HEAD":
            # the transport sends GET's headers and drops the body
            handler = route.methods.get("GET")
        if handler is None:
            allow = ", ".join(sorted({*route.methods, "OPTIONS"}))
            if req.method == "OPTIONS":
                return Response(204, content_type="", headers=(("Allow", allow),))
            return error_response(
                405, f"{path} does not accept {req.method} (use {allow})", Allow=allow
            )
        if req.method in ("POST", "PUT") and not _is_json(req.headers.get("content-type")):
            err = UnsupportedMediaTypeError(
                f"{req.method} {path} takes a JSON body: send Content-Type: {JSON}"
            )
            return error_response(err.status, str(err))
        return self._guarded(route, req, handler, match.groupdict())

    def _plain_refusal(self, route: Route, path: str) -> Response | None:
        plain, https_url = self._plain
        if plain is PlainHttp.ALL:
            return None
        settings, _ = self._auth_state
        if route.probe and path in PROBES and not settings.status_requires_auth:
            return None
        err = HttpsRequiredError(
            f"this agent serves its API over HTTPS only: use {https_url}{path} (plain HTTP "
            "answers only the load-balancer probes that need no credentials)"
        )
        return error_response(err.status, str(err))

    def _guarded(
        self, route: Route, req: Request, handler: Handler, params: dict[str, str]
    ) -> Response:
        settings, authenticator = self._auth_state
        try:
            if route.public:
                pass
            elif route.join and _join_token(req) is not None:
                req = attrs.evolve(req, join_token=_join_token(req))
                return self._join_attempt(req, handler, params)
            elif not _open(route, settings):
                role = self._authenticate(authenticator, req)
                needed = route.required(req.method)
                if role < needed:
                    raise ForbiddenError(
                        f"the API user's role ({role.name.lower()}) may not {req.method} "
                        f"{req.path}: that needs the {needed.name.lower()} role"
                    )
                req = attrs.evolve(req, role=role)
            return handler(req, params)
        except HacoreError as err:
            status = status_for(err)
            if status == 500:
                logger.warning("%s %s failed: %s", req.method, req.path, err)
            extra = {"WWW-Authenticate": REALM} if status == 401 else {}
            retry = getattr(err, "retry_after", None)
            if retry is not None:
                extra["Retry-After"] = str(max(1, math.ceil(retry)))
            return error_response(status, str(err) or type(err).__name__, **extra)
        except Exception:
            logger.exception("%s %s failed", req.method, req.path)
            return error_response(500, INTERNAL_ERROR)

    def _join_attempt(self, req: Request, handler: Handler, params: dict[str, str]) -> Response:
        """A join token is checked with a store read and is worth a ticket: a client whose
        tokens keep failing is refused (429) before that read, as a wrong password is before
        hashing."""
        client = req.client
        attempts = self._join_attempts
        wait = attempts.take(client)
        if wait:
            self._log_join(
                client, req, f"refused before checking: too many failed, for {wait:.0f} s"
            )
            raise TooManyRequestsError(
                "too many failed join tokens from this address: try again later",
                retry_after=wait,
            )
        try:
            response = handler(req, params)
        except AuthenticationError:
            self._log_join(client, req, "refused")
            raise
        except BaseException:
            # refused for another reason (not the active, a bad request): not a guess
            attempts.give_back(client)
            raise
        attempts.give_back(client)
        return response

    def _log_join(self, client: str, req: Request, what: str) -> None:
        """One line per address and 10 s, naming the node asked for, never the token."""
        held = self._join_logged.allow(client)
        if held is None:
            return
        try:
            name = json_object(req).get("name")
        except HacoreError:
            name = None
        node = f" for node {name[:64]!r}" if isinstance(name, str) else ""
        more = f" ({held} more since the last report)" if held else ""
        logger.warning(
            "join token from %s%s %s%s", client or "an unknown address", node, what, more
        )

    @staticmethod
    def _authenticate(authenticator: Authenticator, req: Request) -> Role:
        header = req.headers.get("authorization")
        role = authenticator.role(header, req.client)
        if role is not None:
            return role
        if not authenticator.configured:
            raise AuthenticationError(
                "this agent has no API credentials yet (api.auth is unset), so it refuses "
                "requests that need them"
            )
        if not header:
            raise AuthenticationError("authentication required: send HTTP Basic credentials")
        raise AuthenticationError("wrong credentials")


def _open(route: Route, settings: ApiSettings) -> bool:
    """Whether ``route`` is served without credentials: the probes unless
    ``status_requires_auth`` (a load balancer may have none), ``/metrics`` only with
    ``metrics_without_credentials`` (a scrape config can carry the probe user's)."""
    if route.metrics:
        return settings.metrics_without_credentials
    return route.probe and not settings.status_requires_auth


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == JSON


def _join_token(req: Request) -> str | None:
    """The join token, when the request presents one as the join user's password."""
    credentials = parse_basic(req.headers.get("authorization"))
    if credentials is None or credentials[0] != JOIN_TOKEN_USER or not credentials[1]:
        return None
    return credentials[1]
