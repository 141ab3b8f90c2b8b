"""Who may act from the page. Read-only unless ``[web] token_file`` is set;
then a person signs in with that token once (an HttpOnly, SameSite=Strict
session cookie), and every action is a POST carrying the session's CSRF token,
from a page of this origin. Scripts may send ``Authorization: Bearer TOKEN``
instead (a header no other site's page can make a browser send)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from orchestrator.core.errors import InputError

SESSION_COOKIE = "orchestrator_session"
MAX_SESSIONS = 1000  # the oldest sign-in goes first past this


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise InputError("[web] token_file", f"cannot read {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise InputError("[web] token_file", f"{path}: the token is shorter than 16 "
                         "characters; make one with `openssl rand -hex 32`")
    return token


class Access:
    def __init__(self, token_file: Path | None) -> None:
        self._token = read_token(token_file) if token_file is not None else None
        self._key = os.urandom(32)  # this process's: sessions end with it
        self._sessions: OrderedDict[str, None] = OrderedDict()

    @property
    def actions(self) -> bool:
        return self._token is not None

    def sign_in(self, offered: str) -> str | None:
        """A new session id for the right token, else None."""
        if self._token is None or not hmac.compare_digest(offered.strip().encode(),
                                                          self._token.encode()):
            return None
        session = secrets.token_urlsafe(32)
        self._sessions[session] = None
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def sign_out(self, request: web.Request) -> None:
        session = request.cookies.get(SESSION_COOKIE)
        if session is not None:
            self._sessions.pop(session, None)

    def session(self, request: web.Request) -> str | None:
        session = request.cookies.get(SESSION_COOKIE)
        return session if self.actions and session in self._sessions else None

    def csrf(self, session: str) -> str:
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()

    def may_act(self, request: web.Request, form_csrf: str | None) -> bool:
        """An action request that carries the token, or a signed-in page's CSRF token
        from this origin."""
        if self._token is None:
            return False
        bearer = request.headers.get("Authorization", "")
        if bearer.startswith("Bearer ") and hmac.compare_digest(
                bearer[7:].strip().encode(), self._token.encode()):
            return True
        session = self.session(request)
        if session is None or not form_csrf:
            return False
        if not same_origin(request):
            return False
        return hmac.compare_digest(form_csrf.encode(), self.csrf(session).encode())


def same_origin(request: web.Request) -> bool:
    """The Origin (or, lacking it, the Referer) names this host, if the browser sent one."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host
