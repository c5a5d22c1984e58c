"""Dashboard sessions and CSRF protection.

A session is a cookie holding ``[user id, CSRF token, issued at]``, signed with
itsdangerous (HMAC-SHA256) under the session secret: the server keeps no session
table, and a cookie cannot be forged or altered. Every request checks that the
session is younger than ``session_max_age_s`` and that its user exists and is not
disabled, so disabling a user ends their sessions at once. The cookie is
``HttpOnly``, ``SameSite=Lax``, limited to ``/admin``, and ``Secure`` when the
service's public URL is https.

CSRF: every form carries the session's random token in a hidden field, and every
POST is refused with 403 unless it matches (compared in constant time). The sign-in
form, which has no session yet, is protected the same way by a short-lived signed
cookie of its own (login CSRF). Signing in starts a new session with a new token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response
from itsdangerous import BadData, URLSafeSerializer

from recobra.settings import Settings, SettingsError
from recobra.store.admins import AdminUser, get_admin
from recobra.web.services import Services, get_services

SESSION_COOKIE = "recobra_admin"
LOGIN_COOKIE = "recobra_admin_login"
CSRF_FIELD = "csrf_token"
COOKIE_PATH = "/admin"
LOGIN_FORM_TTL = timedelta(hours=1)


def session_secret(settings: Settings) -> str:
    """``session_secret``, or a key derived from ``link_secret`` (HMAC with a label of
    its own, so a session never verifies as a link or the other way round)."""
    if settings.session_secret:
        return settings.session_secret  # its length is checked with the settings
    if not settings.link_secret:
        raise SettingsError("the dashboard needs RECOBRA_SESSION_SECRET or RECOBRA_LINK_SECRET")
    return hmac.new(
        settings.link_secret.encode("utf-8"), b"recobra.admin.session.v1", hashlib.sha256
    ).hexdigest()


class LoginRequired(Exception):
    """No valid session: the page redirects to the sign-in form, which says why
    (``reason``: ``expired``, ``disabled``, ``invalid`` or empty)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class CsrfFailed(Exception):
    """A POST without the right CSRF token: 403, nothing done."""


@dataclass(frozen=True, slots=True)
class AdminSession:
    """The signed-in user and the session's CSRF token."""

    user: AdminUser
    csrf: str
    issued_at: datetime

    @property
    def operator(self) -> str:
        """How actions are attributed on cases' timelines."""
        return self.user.email


class Sessions:
    """Makes and reads the dashboard's cookies for one service."""

    def __init__(self, settings: Settings) -> None:
        secret = session_secret(settings)
        self.max_age = timedelta(seconds=settings.session_max_age_s)
        self.secure = settings.public_url.startswith("https://")
        self._session = URLSafeSerializer(secret, salt="recobra.admin.session")
        self._login = URLSafeSerializer(secret, salt="recobra.admin.login")

    # -- the session cookie

    def start(self, response: Response, user: AdminUser, now: datetime) -> str:
        """Set a new session cookie for ``user``; returns its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        value = self._session.dumps([user.id, csrf, int(now.timestamp())])
        self._set(response, SESSION_COOKIE, value, int(self.max_age.total_seconds()))
        return csrf

    def read(self, request: Request, services: Services) -> AdminSession:
        """The request's valid session, or ``LoginRequired``."""
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            raise LoginRequired()
        try:
            user_id, csrf, issued = self._session.loads(raw)
        except (BadData, ValueError, TypeError):
            raise LoginRequired("invalid") from None
        now = services.now()
        issued_at = datetime.fromtimestamp(int(issued), now.tzinfo)
        if now >= issued_at + self.max_age or issued_at > now + timedelta(minutes=5):
            raise LoginRequired("expired")
        user = get_admin(services.store.engine, str(user_id))
        if user is None or not user.active:
            raise LoginRequired("disabled")
        return AdminSession(user, str(csrf), issued_at)

    def end(self, response: Response) -> None:
        response.delete_cookie(
            SESSION_COOKIE, path=COOKIE_PATH, secure=self.secure, httponly=True, samesite="lax"
        )

    # -- the sign-in form's CSRF cookie

    def login_token(self, request: Request) -> tuple[str, bool]:
        """The sign-in form's token: the one in its cookie while that is good, else a
        new one (``True``: set it with ``set_login_cookie``)."""
        token = self.login_cookie_token(request)
        if token is not None:
            return token, False
        return secrets.token_urlsafe(24), True

    def set_login_cookie(self, response: Response, token: str) -> None:
        self._set(response, LOGIN_COOKIE, self._login.dumps(token), int(LOGIN_FORM_TTL.total_seconds()))

    def login_cookie_token(self, request: Request) -> str | None:
        raw = request.cookies.get(LOGIN_COOKIE)
        if not raw:
            return None
        try:
            value = self._login.loads(raw)
        except BadData:
            return None
        return value if isinstance(value, str) else None

    def _set(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=COOKIE_PATH,
            secure=self.secure,
            httponly=True,
            samesite="lax",
        )


def same_token(expected: str | None, presented: str | None) -> bool:
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))


def sessions_of(request: Request) -> Sessions:
    value: Sessions = request.app.state.admin_sessions
    return value


def current_admin(request: Request, services: Annotated[Services, Depends(get_services)]) -> AdminSession:
    """FastAPI dependency: the signed-in user (else a redirect to sign in)."""
    return sessions_of(request).read(request, services)


async def csrf_checked(
    request: Request, session: Annotated[AdminSession, Depends(current_admin)]
) -> AdminSession:
    """FastAPI dependency for every POST: the session, once the form's CSRF token
    matches it (else 403 and nothing is done)."""
    form = await request.form()
    presented = form.get(CSRF_FIELD)
    if not same_token(session.csrf, presented if isinstance(presented, str) else None):
        raise CsrfFailed()
    return session


CurrentAdmin = Annotated[AdminSession, Depends(current_admin)]
CheckedAdmin = Annotated[AdminSession, Depends(csrf_checked)]
