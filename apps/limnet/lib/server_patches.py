"""Fixes for MONAI Label 0.8.5's server, applied when our app loads in server mode:

- client mistakes it answers with HTTP 500 become 4xx with a message: `params` is parsed with json.loads, and
  unknown images or models raise MONAILabelException;
- the bundled OHIF viewer: files in sub-folders were answered with index.html (`os.pathsep` for `/`);
- ids that become paths: `POST /infer/M?image=/any/file` (or `../..`, or `"image"` inside `params`) read files
  outside the studies folder, and session ids were joined into the sessions folder unchecked;
- unknown model, strategy or scoring names were HTTP 500 (`PUT /model/x`, `/activelearning/x`) or started a
  subprocess bound to fail (`/train/x`, `/scoring/x`, `/batch/infer/x`): now 404 before anything runs;
- `PUT /model/limnet` copied any upload over the served weights in place (garbage broke every later click):
  now the upload must load as LIM-Net weights, the previous file is kept and the swap is atomic;
- authentication (MONAI_LABEL_AUTH_ENABLE): every token was refused with 401, valid ones too (0.8.5 calls
  PyJWT 2's `jwt.decode` without `algorithms`); a wrong password at `/auth/token` and an unreachable identity
  provider were HTTP 500;
- the event loop: every route is an `async def` that calls blocking work (a click, a series' download) and the
  DICOMweb proxy calls its PACS with `requests` inside the loop, so each held every other request: the handlers
  now run in worker threads one at a time (`_handlers_off_the_event_loop`), the proxy in parallel
  (`_off_the_event_loop`).

And two additions: when a client fetches an image (`GET /datastore/image`, as Slicer does before the first click),
or a viewer reads a series through the DICOMweb proxy (`/proxy/dicom/...`, as OHIF does when it opens one), the
infer tasks start fetching, reading and normalising it in the background, so the first click does not pay for it.
And a client on another machine gets a click's answer gzip-encoded (HTTP gzip for a browser, a gzip NRRD for
Slicer's client) and OHIF's code deflated: a CT's label volume is 78 MB raw and about 0.1 MB deflated, which over a
network is the difference between seconds and a blink (`CompressAnswers`).
"""

from __future__ import annotations

import asyncio
import dis
import errno
import functools
import inspect
import ipaddress
import json
import logging
import mimetypes
import os
import re
import sys
import threading
import time
from urllib.parse import parse_qs

import requests
from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)
from starlette.datastructures import MutableHeaders

from lib.infers.result_writer import GZIP_BY_DEFAULT, gzip_stream
from lib.validation import check_name, invalid

logger = logging.getLogger(__name__)

JWT_ALGORITHMS = ["RS256", "RS384", "RS512"]  # what Keycloak signs with; never "none" or HMAC with a public key

async def _bad_json(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": f"params is not valid JSON: {exc.msg} at {exc.pos}"})


async def _monailabel_error(request: Request, exc: MONAILabelException) -> JSONResponse:
    if isinstance(exc, (ImageNotFoundException, LabelNotFoundException)) or "not found" in str(exc.msg).lower():
        status = 404
    elif exc.error == MONAILabelError.INVALID_INPUT:
        status = 422
    else:
        logger.error("server error: %s", exc.msg)
        return JSONResponse(status_code=500, content={"detail": str(exc.msg)})
    return JSONResponse(status_code=status, content={"detail": str(exc.msg)})


async def _upstream_error(request: Request, exc: requests.RequestException) -> JSONResponse:
    """A service the server calls (identity provider, DICOMweb) refused or failed: not the server's own fault."""
    code = exc.response.status_code if getattr(exc, "response", None) is not None else None
    if request.url.path.rstrip("/").endswith("/auth/token") and code in (400, 401, 403):
        return JSONResponse(status_code=401, content={"detail": "invalid username or password"},
                            headers={"WWW-Authenticate": "Bearer"})
    logger.error("upstream service error on %s: %s", request.url.path, exc)
    return JSONResponse(status_code=502, content={"detail": f"an upstream service failed ({type(exc).__name__})"})


async def _disk_full(request: Request, exc: OSError) -> JSONResponse:
    """A full disk (or quota) is the server's condition, not a fault in the request: say so (507), so the user frees
    space and sends it again instead of reading a bare "Internal Server Error". Labels are written whole or not at all
    (`datastore.atomic_copy`), so what was saved before stays. Other OS errors go on to the usual 500."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        raise exc
    logger.error("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(status_code=507, content={
        "detail": f"the server's disk is full ({exc.strerror}): the request failed and kept nothing it wrote; what "
                  "was saved before is unchanged. Free some space on the server and send it again"})


def _checked_params(params: str) -> None:
    try:
        p = json.loads(params) if params else {}
    except json.JSONDecodeError:
        return  # the endpoint's own parse reports it (422)
    if isinstance(p, dict):
        for key in ("image", "session"):
            if key in p:
                raise invalid(f"params may not set '{key}': name the image with the 'image' query parameter")


def _guard_infer(run_inference):
    @functools.wraps(run_inference)
    def guarded(background_tasks, model, image="", session_id="", params="{}", file=None, label=None, output=None):
        if image:
            check_name(image, "image id")
        if session_id:
            check_name(session_id, "session id")
        _checked_params(params)
        return run_inference(background_tasks, model, image, session_id, params, file, label, output)

    return guarded


def _guard_session(fn):
    @functools.wraps(fn)
    def guarded(session_id: str, *args, **kwargs):
        return fn(check_name(session_id, "session id"), *args, **kwargs)

    return guarded


def _require_known(fn, attr: str, what: str, position: int):
    """Answer 404 unless the name argument at `position` is one of the app's `attr` (infers, trainers, ...)."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        from monailabel.interfaces.utils.app import app_instance

        name = args[position] if len(args) > position else next(iter(kwargs.values()), None)
        known = getattr(app_instance(), attr, {}) or {}
        if name not in known:
            raise HTTPException(status_code=404, detail=f"no {what} named {str(name)[:80]!r}; available: {sorted(known)}")
        return fn(*args, **kwargs)

    return guarded


def _update_model(original):
    """PUT /model/NAME for LIM-Net: the upload must load as LIM-Net weights; the previous file is kept as
    NAME.prev.pt and the new one renamed into place (a reader never sees half a file)."""

    @functools.wraps(original)
    def update(background_tasks, model, file):
        import shutil
        import tempfile

        from monailabel.interfaces.utils.app import app_instance
        from monailabel.utils.others.generic import file_checksum

        from lib.infers.limnet import LimNetInfer
        from lib.net.bundle import LimNet

        task = app_instance()._infers.get(model)
        if not isinstance(task, LimNetInfer):
            return original(background_tasks, model, file)
        target = task.path[-1] if isinstance(task.path, (list, tuple)) else task.path
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".upload-", suffix=".pt")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(file.file, out)
                out.flush()
                os.fsync(out.fileno())
            try:
                LimNet.load(tmp)
            except Exception as e:
                raise invalid(f"the upload is not LIM-Net weights ({type(e).__name__}); the served model is unchanged") from e
            if os.path.exists(target):
                shutil.copy2(target, target.replace(".pt", ".prev.pt"))
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        s = os.stat(target)
        return {"checksum": file_checksum(target), "modified_time": int(s.st_mtime)}

    return update


def from_token(token: str):
    """monailabel.endpoints.user.auth.from_token with the signature algorithms named (PyJWT 2 refuses every
    token otherwise) and an expiry required; the key is the realm's `public_key`, as before."""
    import jwt
    from monailabel.config import settings
    from monailabel.endpoints.user import auth

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return auth.DEFAULT_USER
    try:
        key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    except (requests.RequestException, KeyError, ValueError) as e:
        logger.error("cannot fetch the realm's public key from %s: %s", settings.MONAI_LABEL_AUTH_REALM_URI, e)
        raise HTTPException(status_code=503, detail="the identity provider is unreachable") from e
    payload = jwt.decode(token, key, algorithms=JWT_ALGORITHMS,
                         options={"verify_signature": True, "verify_aud": False, "verify_exp": True, "require": ["exp"]})
    roles = payload
    for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
        roles = roles.get(part) if isinstance(roles, dict) else None
    return auth.User(username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME),
                     email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
                     name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
                     roles=list(roles) if isinstance(roles, list) else [])


for ext, mime in ((".js", "application/javascript"), (".mjs", "application/javascript"), (".wasm", "application/wasm"),
                  (".json", "application/json"), (".map", "application/json"), (".css", "text/css"),
                  (".svg", "image/svg+xml"), (".woff2", "font/woff2")):
    mimetypes.add_type(mime, ext)


def get_ohif(path: str) -> FileResponse:
    """Serve a file of the OHIF bundle as itself; unknown paths are the single-page app's routes (index.html)."""
    import monailabel.endpoints.ohif as ohif

    root = os.path.realpath(os.path.join(os.path.dirname(os.path.realpath(ohif.__file__)), "static", "ohif"))
    file = os.path.realpath(os.path.join(root, path)) if path else os.path.join(root, "index.html")
    if os.path.commonpath([root, file]) != root:
        raise HTTPException(status_code=404, detail="Resource NOT Found")
    if not os.path.isfile(file):
        file = os.path.join(root, "index.html")
    if not os.path.isfile(file):
        raise HTTPException(status_code=404, detail="Resource NOT Found")
    mime = mimetypes.guess_type(file)[0] or "application/octet-stream"
    return FileResponse(file, media_type=mime)


def prefetch_image(image_id: str) -> None:
    """Warm the infer tasks' image caches with a datastore image. A DICOMweb series is downloaded and converted as
    the first click would do it (one download per series at a time, `lib.dicomweb.serialize_downloads`), and only
    if it is one of the datastore's images (not a SEG or a report the viewer also reads)."""
    from monailabel.datastore.dicom import DICOMWebDatastore
    from monailabel.datastore.local import LocalDatastore
    from monailabel.interfaces.utils.app import app_instance

    try:
        instance = app_instance()
        datastore = instance.datastore()
        if isinstance(datastore, DICOMWebDatastore):
            if image_id not in datastore.list_images():
                return
        elif not isinstance(datastore, LocalDatastore):
            return
        path = datastore.get_image_uri(image_id)
        if not path or not os.path.isfile(path):
            return
        for task in instance._infers.values():
            if hasattr(task, "volumes"):
                task.volumes.prefetch(path)
    except Exception as e:  # a warm-up must never break the request that triggered it
        logger.info("no prefetch for %s: %s", image_id, e)


def _off_the_event_loop(proxy_dicom):
    """MONAI Label's DICOMweb proxy, run in a worker thread. 0.8.5's `proxy_dicom` is a coroutine that calls
    `requests` (blocking) inside the event loop: while a viewer loaded a series (a request per frame, six at a
    time from a browser) the server forwarded one at a time and did nothing else, not even send a click's answer
    (a 512x512x300 CT series: 16 s through the proxy against 8 s from Orthanc directly; `GET /info/` took 0.26 s
    meanwhile). Its own code runs unchanged, in a fresh event loop of a worker thread, with the request's body read
    beforehand on the server's loop (a Request caches it, so the proxy's `await request.body()` finds it there)."""

    @functools.wraps(proxy_dicom)
    async def threaded(request: Request, op: str, path: str):
        if request.method == "POST":
            await request.body()
        return await run_in_threadpool(asyncio.run, proxy_dicom(request, op, path))

    return threaded


# MONAI Label's request handlers, one at a time in worker threads (`_handlers_off_the_event_loop`)
APP_WORK = threading.Lock()
_STAY_ON_THE_LOOP = {"api_get_ohif"}  # the viewer's bundle files: quick, no app state, never behind a click
_AWAITING = {"GET_AWAITABLE", "BEFORE_ASYNC_WITH", "GET_AITER", "SEND"}


def _never_awaits(fn) -> bool:
    """A coroutine function whose body awaits nothing: it runs to its end at its first step, blocking whatever
    loop steps it (as MONAI Label 0.8.5's `async def api_*` handlers, which call blocking code directly)."""
    return inspect.iscoroutinefunction(fn) and not any(i.opname in _AWAITING for i in dis.get_instructions(fn))


def _stepped_in_a_worker_thread(handler):
    """`handler` (a coroutine function that never awaits) run to its end in a worker thread, under `APP_WORK`."""

    def run(values: dict):
        with APP_WORK:
            coroutine = handler(**values)
            try:
                coroutine.send(None)
            except StopIteration as done:
                return done.value
            coroutine.close()
            raise RuntimeError(f"{handler.__name__} awaited: it cannot run in a worker thread")

    @functools.wraps(handler)  # FastAPI reads the handler's parameters through __wrapped__
    async def threaded(**values):
        return await run_in_threadpool(run, values)

    threaded.limnet_threaded = True
    return threaded


def _api_routes(routes):
    """The APIRoutes of a route list, included routers' too (FastAPI >= 0.120 keeps those as `_IncludedRouter`s
    that build their handlers from the original routes on first use)."""
    from fastapi.routing import APIRoute

    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner:
            yield from _api_routes(inner)


def _handlers_off_the_event_loop(app) -> list[str]:
    """Run MONAI Label's request handlers in worker threads, one at a time. In 0.8.5 every route is an `async def`
    that calls the blocking work directly (inference, a series' download, a label's DICOM SEG conversion, a
    session's upload), so the event loop was held for the whole of it: while a click was computed the server
    forwarded no viewer's DICOMweb read, served no file and sent no earlier answer. Now such a handler runs in a
    worker thread under one lock (`APP_WORK`): the app's code still runs one request at a time, as MONAI Label's
    datastores and tasks were written for, and the event loop stays free for the rest. Handlers that do await
    (the DICOMweb proxy, see `_off_the_event_loop`) and the viewer's bundle files stay where they are."""
    moved = []
    for route in _api_routes(app.router.routes):
        handler = route.endpoint
        if getattr(handler, "limnet_threaded", False) or not _never_awaits(handler):
            continue
        if handler.__name__ in _STAY_ON_THE_LOOP:
            continue
        threaded = _stepped_in_a_worker_thread(handler)
        route.endpoint = threaded  # what an included router builds its handler from, on the first request
        if getattr(route.dependant, "call", None) is handler:
            route.dependant.call = threaded  # what a route's own handler calls, looked up on every request
        moved.append(f"{','.join(sorted(route.methods))} {route.path}")
    return moved


_PROXIED_SERIES = re.compile(r"^/proxy/dicom/(?:wado|qido)/(?:.*/)?series/([0-9.]{1,64})(?:/|$)")


class PrefetchFetchedImages:
    """Starts `prefetch_image` when a client fetches a datastore image, or a viewer reads a series through the
    DICOMweb proxy (once per series and minute: a viewer sends hundreds of requests per series). Plain ASGI, not
    `BaseHTTPMiddleware`: that one re-streams every response body through a memory channel, a detour for every
    click's 78 MB answer (with the 4 MB reads below, the answer's transfer went from about 0.45 to 0.25 s on a
    CT)."""

    def __init__(self, app) -> None:
        self.app = app
        self._proxied: dict[str, float] = {}  # series -> when its prefetch last started

    def _series_to_prefetch(self, path: str) -> str:
        found = _PROXIED_SERIES.match(path)
        if not found:
            return ""
        now, series = time.monotonic(), found.group(1)
        if now - self._proxied.get(series, -1e9) < 60:
            return ""
        if len(self._proxied) > 1000:
            self._proxied.clear()
        self._proxied[series] = now
        return series

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if scope["path"].rstrip("/") == "/datastore/image":
            image = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("image", [""])[0]
        else:
            image = self._series_to_prefetch(scope["path"]) if scope["path"].startswith("/proxy/dicom/") else ""
        if not image:
            await self.app(scope, receive, send)
            return

        async def watch(message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200 and image:
                threading.Thread(target=prefetch_image, args=(image,), daemon=True).start()
            await send(message)

        await self.app(scope, receive, watch)


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, and ::ffff:127.x.y.z (a dual-stack socket's view of a local IPv4 client)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def _accepts_gzip(headers) -> bool:
    """Whether a request's Accept-Encoding admits gzip (RFC 9110: `gzip` or `*`, with a q-value above 0)."""
    accept = b",".join(v for k, v in headers if k.lower() == b"accept-encoding").decode("latin-1").lower()
    for part in accept.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "x-gzip", "*"):
            q = params.strip()
            try:
                return not q.startswith("q=") or float(q[2:]) > 0
            except ValueError:
                return False
    return False


_COMPRESSIBLE = {"application/javascript", "application/json", "application/wasm", "image/svg+xml", "application/xml"}


class CompressAnswers:
    """gzip-encodes (HTTP `Content-Encoding`) the answers of `POST /infer/...` and the viewer's code for clients
    that accept it and are on another machine.

    A click's answer is a whole label volume: 78 MB for a 512x512x300 CT, nearly all zeros. Over a 1 Gbit/s network
    that is 0.6 s a click, over 100 Mbit/s 6 s. Deflated (ISA-L, level 1: about 10 ms for those 78 MB here) it is a
    few hundred KB. Browsers (OHIF) ask for gzip and inflate it themselves. MONAI Label's own client (Slicer) takes
    no HTTP gzip (`Accept-Encoding: identity`): its NRRD answer is gzip-encoded inside the file instead
    (`result_writer.GZIP_BY_DEFAULT`, unless the request says `result_compress`), which Slicer's reader inflates;
    on loopback too when the answer is multipart, as that client's is. An answer already gzip-compressed (a
    `.nii.gz` file) is sent as it is. OHIF's code is compressed too (37 MB of script and wasm, 9 MB deflated), not
    its pictures. What the DICOMweb proxy forwards keeps the PACS's encoding (Orthanc deflates its JSON and frames
    when asked, as the proxy's `requests` asks).

    On loopback the raw bytes are quicker (Chromium here took about 0.1 s longer per CT answer to inflate it than to
    receive it raw), so with `mode` "auto" (the default) a client on the server's own machine gets them raw;
    "always" compresses for loopback clients too (a reverse proxy on the same machine that does not send
    X-Forwarded-For: uvicorn takes the client's address from that header when it comes from 127.0.0.1). Plain ASGI,
    streaming: each 4 MB read is deflated as it goes out."""

    def __init__(self, app, mode: str = "auto") -> None:
        self.app = app
        self.mode = mode

    def _travels(self, scope) -> bool:
        """Whether the answer goes to another machine (as far as the mode lets the server tell)."""
        return self.mode == "always" or not _is_loopback((scope.get("client") or ("", 0))[0])

    async def __call__(self, scope, receive, send) -> None:
        method, path = scope.get("method"), scope.get("path", "")
        answer = method == "POST" and path.startswith("/infer/")
        viewer = method == "GET" and (path.startswith("/ohif/") or path == "/ohif")
        if scope["type"] != "http" or not (answer or viewer):
            await self.app(scope, receive, send)
            return
        asked = scope["headers"]
        travels = self._travels(scope)
        encode = travels and _accepts_gzip(asked) and not any(k.lower() == b"range" for k, _ in asked)
        if answer:
            output = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("output", ["all"])[0]
            # a client that takes no HTTP gzip gets a gzip NRRD instead, unless its request says `result_compress`:
            # when the answer travels, or comes multipart (MONAI Label's default answer, Slicer's: the server joins
            # the whole file into one string and the client parses it back, which for 78 MB cost more than inflating)
            GZIP_BY_DEFAULT.set(not encode and (travels or output in ("all", "")))  # the endpoint's thread: a copy
        if not encode:
            await self.app(scope, receive, send)
            return
        deflate = None

        def worth_it(headers: MutableHeaders) -> bool:
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if answer:  # a label volume, unless it is gzip already (.nii.gz)
                return "gzip" not in kind and ".gz" not in headers.get("content-disposition", "").lower()
            # the viewer's code and styles (37 MB of OHIF's bundle deflate to 9 MB), not its pictures
            return kind.startswith("text/") or kind in _COMPRESSIBLE

        async def compressed(message) -> None:
            nonlocal deflate
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if message["status"] == 200 and "content-encoding" not in headers and worth_it(headers):
                    deflate = gzip_stream()
                    for name in ("content-length", "accept-ranges", "etag"):  # they described the raw bytes
                        del headers[name]
                    headers["content-encoding"] = "gzip"
                headers.add_vary_header("Accept-Encoding")
            elif message["type"] == "http.response.body" and deflate is not None:
                more = message.get("more_body", False)
                body = deflate.compress(message.get("body", b""))
                if not more:
                    body += deflate.flush()
                message = {"type": "http.response.body", "body": body, "more_body": more}
            await send(message)

        await self.app(scope, receive, compressed)


def install(answer_gzip: str = "auto") -> None:
    """Register the handlers on monailabel's FastAPI app if this process is the server. `answer_gzip` (`--conf
    answer_gzip auto|always|never`): when to gzip clicks' answers and OHIF's code (`CompressAnswers`)."""
    if answer_gzip not in ("auto", "always", "never"):
        raise ValueError(f"answer_gzip must be auto, always or never, not {answer_gzip!r}")
    server = sys.modules.get("monailabel.app")
    if server is None or not hasattr(server, "app"):
        return
    import monailabel.endpoints.activelearning as activelearning
    import monailabel.endpoints.batch_infer as batch_infer
    import monailabel.endpoints.infer as infer
    import monailabel.endpoints.model as model
    import monailabel.endpoints.ohif as ohif
    import monailabel.endpoints.proxy as proxy
    import monailabel.endpoints.scoring as scoring
    import monailabel.endpoints.session as session
    import monailabel.endpoints.train as train
    from monailabel.endpoints.user import auth

    # the routes look these functions up by name on every request
    ohif.get_ohif = get_ohif
    auth.from_token = from_token
    if not getattr(proxy.proxy_dicom, "__wrapped__", None):  # the routes look it up by name on every request
        proxy.proxy_dicom = _off_the_event_loop(proxy.proxy_dicom)
    if not getattr(infer.run_inference, "__wrapped__", None):  # once per process
        infer.run_inference = _guard_infer(infer.run_inference)
        session.get_session = _guard_session(session.get_session)
        session.remove_session = _guard_session(session.remove_session)
        for name in ("model_info", "download_model", "delete_model"):
            setattr(model, name, _require_known(getattr(model, name), "_infers", "model", 0))
        model.update_model = _require_known(_update_model(model.update_model), "_infers", "model", 1)
        train.run_model = _require_known(train.run_model, "_trainers", "trainer", 0)
        batch_infer.run = _require_known(batch_infer.run, "_infers", "model", 0)
        scoring.run_method = _require_known(scoring.run_method, "_scoring_methods", "scoring method", 0)
        activelearning.sample = _require_known(activelearning.sample, "_strategies", "strategy", 0)
    # a click's answer is a whole label volume (78 MB for a CT): sent in 64 KB reads that is ~1200 trips through
    # the event loop; 4 MB reads send it several times faster (static OHIF files are smaller than one read anyway)
    FileResponse.chunk_size = max(FileResponse.chunk_size, 4 << 20)
    app = server.app
    moved = _handlers_off_the_event_loop(app)
    if moved:
        logger.info("request handlers run in worker threads, one at a time: %d routes", len(moved))
    app.add_exception_handler(json.JSONDecodeError, _bad_json)
    app.add_exception_handler(MONAILabelException, _monailabel_error)
    app.add_exception_handler(requests.RequestException, _upstream_error)
    app.add_exception_handler(OSError, _disk_full)
    app.middleware_stack = None  # rebuilt on the next request, now with these handlers
    app.add_middleware(PrefetchFetchedImages)
    if answer_gzip != "never":
        app.add_middleware(CompressAnswers, mode=answer_gzip)
    app.middleware_stack = None
