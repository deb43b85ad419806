"""The review server's one gate: every request is checked against the address it is served
at, and every state-changing route goes through ``ReviewGuard.check_form`` (Origin, the
session's form token) and, where a person acts, ``ReviewGuard.requires[ROLE]`` (a live
session of an account the audit trail vouches for, ``ReviewGuard.person``, whose roles give
ROLE). Routers made by ``ReviewGuard.router(ROLE)`` get all of it for free, and a test
enumerates the application's routes to prove none is missed and each declares its role.

Also here: sign-in and signature (re-authentication) limits that slow a guesser without
letting a stranger lock a person out, security headers, and redirects to local paths only."""

from __future__ import annotations

import math
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, Form, Header, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response
from itsdangerous import BadSignature, URLSafeSerializer
from starlette.middleware.sessions import SessionMiddleware

from cohort.accounts import role_refusal

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SESSION_HOURS = 12
MAX_SIGNATURE_FAILURES = 5  # wrong passwords on signed actions before the session ends
DEVICE_COOKIE = "immunomon_device"
MAX_SESSIONS = 10_000
# The rights a route may require (cohort.accounts.GRANTS): reviewing samples, and the
# study-wide changes an expert makes (templates, publishing). Reading needs a session only.
ROUTE_ROLES = ("reviewer", "expert")


@dataclass(frozen=True)
class Site:
    """Where people reach the server. ``public_url``: the address typed in the browser when
    it differs from the listening one (a TLS proxy in front); ``tls``: served over https
    (cookies Secure, HSTS); ``trusted_proxy``: the one address whose X-Forwarded-For and
    X-Forwarded-Proto headers are believed (none by default)."""

    host: str = "127.0.0.1"
    port: int = 8765
    public_url: str = ""
    tls: bool = False
    trusted_proxy: str = ""

    @property
    def origins(self) -> set[str]:
        """The scheme://host[:port] a genuine page of this server has."""
        if self.public_url:
            parts = urlsplit(self.public_url)
            return {f"{parts.scheme}://{parts.netloc}".lower()}
        scheme = "https" if self.tls else "http"
        names = ["127.0.0.1", "localhost", "[::1]"] if self.host in LOOPBACK else [self.host]
        return {f"{scheme}://{name}:{self.port}" for name in names}

    @property
    def hosts(self) -> set[str]:
        """The Host headers answered (anything else, e.g. a DNS-rebound name, is refused)."""
        return {origin.split("://", 1)[1] for origin in self.origins}

    @property
    def secure_cookies(self) -> bool:
        return self.tls or self.public_url.lower().startswith("https://")


def local_path(target: str, default: str = "/") -> str:
    """``target`` when it is a path on this server, else ``default`` (never //host, a
    scheme, a backslash trick or a control character)."""
    if (
        not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or "\\" in target
        or any(ord(c) < 32 for c in target)
    ):
        return default
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else default


def page_of(path: str) -> str:
    """The page an action's form is on (where a refused action sends the person back)."""
    parts = path.strip("/").split("/")
    if parts[0] == "sample" and len(parts) >= 2:
        return "/sample/" + quote(parts[1])
    if parts[0] in ("signoff", "publish"):
        return "/signoff"
    return "/"


@dataclass
class SignInLimiter:
    """Failed passwords counted per account (back-off: after ``free`` failures each try
    waits 2, 4, ... up to ``max_wait_s`` seconds, so guessing is slow but nobody is locked
    out for long), per address (``per_address`` failures in ``window_s`` block it) and per
    browser that has signed in as the person before (exempt from both until it fails
    ``free`` times itself). Only real account names are counted per name."""

    clock: Callable[[], float] = time.monotonic
    window_s: float = 600.0
    free: int = 5
    max_wait_s: float = 60.0
    per_address: int = 20
    by_account: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    by_address: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    by_device: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))

    def _recent(self, table: dict[str, deque], key: str) -> deque:
        now, recent = self.clock(), table[key]
        while recent and now - recent[0] > self.window_s:
            recent.popleft()
        if not recent:
            del table[key]  # bounded: only keys with failures in the window stay
            return deque()
        return recent

    def refusal(self, account: str | None, address: str, device: str = "") -> str:
        """Why a password may not be tried now ('' when it may); ``account`` None for a name
        with no account, ``device`` the id of a browser that signed in as it before."""
        trusted = bool(device) and len(self._recent(self.by_device, device)) < self.free
        if trusted:
            return ""
        by_address = self._recent(self.by_address, address)
        if len(by_address) >= self.per_address:
            wait = self.window_s - (self.clock() - by_address[0])
            return f"too many failed sign-ins from {address}: wait {math.ceil(wait)} s"
        if account is None:
            return ""
        recent = self._recent(self.by_account, account)
        if len(recent) >= self.free:
            delay = min(2.0 ** (len(recent) - self.free + 1), self.max_wait_s)
            wait = delay - (self.clock() - recent[-1])
            if wait > 0:
                return f"too many failed sign-ins for {account}: wait {math.ceil(wait)} s"
        return ""

    def failed(self, account: str | None, address: str, device: str = "") -> None:
        now = self.clock()
        for table in (self.by_account, self.by_address, self.by_device):
            for key in [k for k, times in table.items() if now - times[-1] > self.window_s]:
                del table[key]  # bounded: only keys with failures in the window stay
        self.by_address[address].append(now)
        if account is not None:
            self.by_account[account].append(now)
        if device:
            self.by_device[device].append(now)

    def succeeded(self, account: str) -> None:
        self.by_account.pop(account, None)


@dataclass
class SessionRecord:
    who: str
    fingerprint: str | None  # the account as it was at sign-in (None without accounts)
    started: float
    signature_failures: int = 0
    roles: tuple[str, ...] = ()  # the account's (its fingerprint covers them)


class ReviewGuard:
    """Sessions, the form token, the site checks and the limits of one review application.

    ``fingerprint(name)``: the account's current token (None: no such account, or one the
    audit trail does not vouch for); ``password_ok(name, password)``; ``failure_log(name,
    address)``: keep a failed sign-in in the bounded log; ``roles(name)``: the account's
    roles; ``account_problem(name)``: why an account with a row is not vouched for."""

    def __init__(
        self,
        site: Site,
        accounts: bool,
        fingerprint: Callable[[str], str | None],
        password_ok: Callable[[str, str], bool],
        failure_log: Callable[[str, str], None],
        clock: Callable[[], float] = time.monotonic,
        roles: Callable[[str], tuple[str, ...]] = lambda name: (),
        account_problem: Callable[[str], str] = lambda name: "",
    ):
        self.site = site
        self.accounts = accounts
        self.fingerprint = fingerprint
        self.password_ok = password_ok
        self.failure_log = failure_log
        self.roles = roles
        self.account_problem = account_problem
        self.clock = clock
        self.limiter = SignInLimiter(clock=clock)
        self.sessions: dict[str, SessionRecord] = {}
        self.secret = secrets.token_hex(32)
        self.devices = URLSafeSerializer(self.secret, salt="device")

        # The two dependencies, as plain functions FastAPI can inspect (no ``self``).
        async def check_form(
            request: Request, csrf: str = Form(""), x_csrf_token: str = Header("")
        ) -> None:
            self.check_site_and_token(request, csrf or x_csrf_token)

        def person(request: Request, _: None = Depends(check_form)) -> str:
            """The signed-in person making a change (after ``check_form``)."""
            name = self.who(request)
            if not name:
                raise HTTPException(401, "sign in first: every change is recorded under a name")
            return name

        def requiring(role: str) -> Callable:
            def allowed(request: Request, name: str = Depends(person)) -> str:
                """The signed-in person, when their roles allow ``role`` (always in loopback
                mode: no accounts, no roles)."""
                refusal = role_refusal(name, self.session_roles(request), role)
                if self.accounts and refusal:
                    raise HTTPException(403, refusal)
                return name

            allowed.role = role  # what routes_and_checks reports for the route
            return allowed

        self.check_form = check_form
        self.person = person
        # One dependency per role, made once: a route's role is found by identity.
        self.requires = {role: requiring(role) for role in ROUTE_ROLES}

    # wiring ----------------------------------------------------------------------------------
    def install(self, app) -> None:
        """The session cookie and the per-request site check and headers."""
        app.add_middleware(
            SessionMiddleware,
            secret_key=self.secret,
            same_site="strict",
            https_only=self.site.secure_cookies,
            max_age=SESSION_HOURS * 3600,
            session_cookie="immunomon_session",
        )
        app.middleware("http")(self.site_middleware)

    async def site_middleware(self, request: Request, call_next) -> Response:
        host = request.headers.get("host", "").lower()
        if host not in self.site.hosts:  # DNS rebinding, or a name this server is not
            return PlainTextResponse(
                f"this review server answers at {' or '.join(sorted(self.site.origins))} "
                f"only, not at Host {host[:80]!r}",
                status_code=421,
            )
        request.state.csp_nonce = secrets.token_urlsafe(16)
        response = await call_next(request)
        self.add_headers(response, request.state.csp_nonce)
        return response

    def add_headers(self, response: Response, nonce: str) -> None:
        headers = response.headers
        headers["Content-Security-Policy"] = (
            f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'self' "
            "'unsafe-inline'; img-src 'self' data:; connect-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
        )
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "same-origin"
        headers.setdefault("Cache-Control", "no-store")
        if self.site.secure_cookies:
            headers["Strict-Transport-Security"] = "max-age=31536000"

    def router(self, role: str = "") -> APIRouter:
        """A router whose every route passes the site and token check and, given a ``role``
        (one of ROUTE_ROLES), needs a person signed in whose roles allow it: later pages get
        the checks for free. Without one: reading, signing in and out."""
        if role and role not in self.requires:
            raise ValueError(f"no route role {role!r} (roles: {', '.join(ROUTE_ROLES)})")
        return APIRouter(dependencies=[Depends(self.requires[role] if role else self.check_form)])

    # the checks ----------------------------------------------------------------------------
    def check_site_and_token(self, request: Request, given: str) -> None:
        """A state-changing request comes from this site's own page: its Origin (or, without
        one, its Referer) is this server, and it carries the session's form token (a form
        field ``csrf`` or the X-CSRF-Token header). Safe methods pass."""
        if request.method in SAFE_METHODS:
            return
        origin = request.headers.get("origin")
        referer = request.headers.get("referer")
        if origin is not None:
            if origin.lower() not in self.site.origins:
                raise HTTPException(403, f"a form from {origin[:80]} cannot change this study")
        elif referer is not None and not any(
            referer.lower().startswith(o + "/") or referer.lower() == o for o in self.site.origins
        ):
            raise HTTPException(403, "a form from another site cannot change this study")
        expected = str(request.session.get("csrf", ""))
        if not expected or not secrets.compare_digest(expected.encode(), given.encode()):
            raise HTTPException(403, "stale or missing form token: reload the page and try again")

    # sessions --------------------------------------------------------------------------------
    def who(self, request: Request) -> str | None:
        """The person of a live session: ended by sign-out, after SESSION_HOURS, or when the
        account it was made for is removed (or replaced)."""
        sid = request.session.get("sid", "")
        record = self.sessions.get(sid)
        if record is None:
            return None
        expired = self.clock() - record.started > SESSION_HOURS * 3600
        if expired or (self.accounts and self.fingerprint(record.who) != record.fingerprint):
            self.sessions.pop(sid, None)
            request.session.pop("sid", None)
            return None
        return record.who

    def session_roles(self, request: Request) -> tuple[str, ...]:
        """The roles of the session's account (() without a session or without accounts)."""
        record = self.sessions.get(request.session.get("sid", ""))
        return record.roles if record is not None else ()

    def csrf_token(self, request: Request) -> str:
        """The session's form token, made on first use; every page's forms carry it."""
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    def start_session(self, request: Request, name: str) -> None:
        """A fresh session id and form token for the person (never the one before sign-in)."""
        self.end_session(request)
        now = self.clock()
        for sid in [s for s, r in self.sessions.items() if now - r.started > SESSION_HOURS * 3600]:
            del self.sessions[sid]
        while len(self.sessions) >= MAX_SESSIONS:  # bounded: the oldest session goes first
            del self.sessions[next(iter(self.sessions))]
        sid = secrets.token_urlsafe(32)
        fingerprint = self.fingerprint(name) if self.accounts else None
        roles = tuple(self.roles(name)) if self.accounts else ()
        self.sessions[sid] = SessionRecord(name, fingerprint, now, roles=roles)
        request.session["sid"] = sid
        request.session["csrf"] = secrets.token_urlsafe(32)

    def end_session(self, request: Request) -> None:
        self.sessions.pop(request.session.get("sid", ""), None)
        request.session.clear()

    # passwords -------------------------------------------------------------------------------
    def address(self, request: Request) -> str:
        """The client's address: the connection's, or the trusted proxy's X-Forwarded-For
        (the ASGI server rewrites it only for that proxy)."""
        return request.client.host if request.client else ""

    def device(self, request: Request, name: str) -> str:
        """The id of this browser when it has signed in as ``name`` before ('' if not)."""
        try:
            item = self.devices.loads(request.cookies.get(DEVICE_COOKIE, ""))
        except BadSignature:
            return ""
        return item["id"] if isinstance(item, dict) and name in item.get("names", []) else ""

    def sign_in(self, request: Request, response: Response, name: str, password: str) -> str:
        """Check a sign-in; '' when it succeeded (session started, this browser remembered
        as one of the person's), else why not (HTTPException 429 while limited). An account
        the audit trail does not vouch for is refused, saying why, once its password is
        given (nobody learns from this which names have a row)."""
        account = name if self.fingerprint(name) is not None else None
        address, device = self.address(request), self.device(request, name)
        refusal = self.limiter.refusal(account, address, device)
        if refusal:
            raise HTTPException(429, refusal)
        # Checked for every name, known or not: the same cost, so timing tells no names apart.
        matches = self.password_ok(name, password)
        if account is None or not matches:
            self.limiter.failed(account, address, device)
            self.failure_log(name, address)
            unbound = self.account_problem(name) if matches else ""
            return unbound or "name or password wrong"
        self.limiter.succeeded(name)
        self.start_session(request, name)
        self._remember_device(request, response, name)
        return ""

    def _remember_device(self, request: Request, response: Response, name: str) -> None:
        try:
            item = self.devices.loads(request.cookies.get(DEVICE_COOKIE, ""))
        except BadSignature:
            item = {}
        if not isinstance(item, dict) or "id" not in item:
            item = {"id": secrets.token_urlsafe(16), "names": []}
        item["names"] = sorted(set(item.get("names", [])) | {name})[-8:]
        response.set_cookie(
            DEVICE_COOKIE,
            self.devices.dumps(item),
            max_age=30 * 24 * 3600,
            httponly=True,
            samesite="strict",
            secure=self.site.secure_cookies,
        )

    def signature(self, request: Request, person: str, password: str) -> None:
        """An approval, exclusion or change of one is a signature: with accounts, the
        password again. Wrong ones count toward the account and address limits, and after
        MAX_SIGNATURE_FAILURES the session ends (429)."""
        if not self.accounts:
            return
        unbound = self.account_problem(person) if self.fingerprint(person) is None else ""
        if unbound:
            raise HTTPException(403, f"nothing was signed: {unbound}")
        record = self.sessions.get(request.session.get("sid", ""))
        if record is not None and self.password_ok(person, password or ""):
            record.signature_failures = 0
            return
        address = self.address(request)
        self.limiter.failed(person, address)
        self.failure_log(person, address)
        if record is not None:
            record.signature_failures += 1
            if record.signature_failures >= MAX_SIGNATURE_FAILURES:
                self.end_session(request)
                raise HTTPException(
                    429,
                    f"{MAX_SIGNATURE_FAILURES} wrong passwords in a row: you are signed out; "
                    "sign in again",
                )
        raise HTTPException(403, "the password does not match: nothing was signed")


def review_site(args) -> tuple:
    """The study, the Site and whether accounts are needed, from ``immunomon review``'s
    options; StudyError (one line, exit 2) for a combination that would be unsafe."""
    from cohort.accounts import account_problem, user_names, vouched_accounts
    from cohort.store import Store
    from cohort.study import Study, StudyError

    study = Study(args.study)
    loopback = args.host in LOOPBACK
    if not loopback:
        store = Store(study.db_path)
        try:
            names = user_names(store.conn)
            vouched = vouched_accounts(store.conn, study.root)
            problems = [account_problem(store.conn, study.root, n, vouched) for n in names]
        finally:
            store.close()
        if not names:
            raise StudyError(
                f"--host {args.host} opens the review to the network: add personal accounts "
                f"first (immunomon users add NAME --study {args.study})"
            )
        if all(problems):  # nobody could sign in: say why now, not at each sign-in
            raise StudyError(f"--host {args.host}: no account can sign in: {problems[0]}")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise StudyError("--tls-cert and --tls-key go together: give both files")
    public = args.public_url.rstrip("/")
    if public and urlsplit(public).scheme not in ("http", "https"):
        raise StudyError(f"--public-url {public!r}: give the full address, e.g. https://host")
    if args.host in ("0.0.0.0", "::") and not public:
        raise StudyError(
            f"--host {args.host} listens on every address: give --public-url "
            "http://NAME:PORT, the address people type (pages are served to it only)"
        )
    if args.trusted_proxy and not public:
        raise StudyError("--trusted-proxy needs --public-url, the address the proxy serves")
    site = Site(
        host=args.host,
        port=args.port,
        public_url=public,
        tls=bool(args.tls_cert),
        trusted_proxy=args.trusted_proxy,
    )
    return study, site, not loopback


class RouteChecks(NamedTuple):
    """A route, every dependency it runs (the callables, flattened) and the role it requires
    ('' when none: reading, signing in and out)."""

    methods: set[str]
    path: str
    calls: list
    role: str


def routes_and_checks(app) -> list[RouteChecks]:
    """Each route of ``app`` with its methods, path, checks and role, routers included: what
    the route-enumerating test inspects and the README's route table shows."""

    def calls(dependant) -> list:
        out = []
        for sub in dependant.dependencies:
            out += [sub.call, *calls(sub)]
        return out

    def walk(routes) -> list[tuple[set[str], str, list]]:
        found = []
        for route in routes:
            if hasattr(route, "effective_route_contexts"):  # an included router (FastAPI >= 0.13x)
                found += [
                    (set(c.methods or ()), c.path, calls(c.dependant))
                    for c in route.effective_route_contexts()
                ]
            elif hasattr(route, "dependant"):
                found.append((set(route.methods or ()), route.path, calls(route.dependant)))
            else:  # a plain Starlette route or mount: no dependencies at all
                found.append((set(getattr(route, "methods", None) or {"*"}), route.path, []))
        return found

    def checked(methods, path, called) -> RouteChecks:
        role = next((c.role for c in called if hasattr(c, "role")), "")
        return RouteChecks(methods, path, called, role)

    return [checked(*found) for found in walk(app.routes)]


def server_options(site: Site, tls_cert: str | None = None, tls_key: str | None = None) -> dict:
    """uvicorn's options for ``site``: X-Forwarded-* believed only from the configured proxy
    (uvicorn's default trusts them from 127.0.0.1, i.e. from anyone on the machine)."""
    return {
        "host": site.host,
        "port": site.port,
        "log_level": "warning",
        "ssl_certfile": tls_cert,
        "ssl_keyfile": tls_key,
        "proxy_headers": bool(site.trusted_proxy),
        "forwarded_allow_ips": site.trusted_proxy or "",
    }
