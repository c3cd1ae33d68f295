"""Fixes for MONAI Label 0.8.5's server, applied when our app loads in server mode:

- client mistakes it answers with HTTP 500 become 4xx with a message: `params` is parsed with json.loads, and
  unknown images or models raise MONAILabelException;
- the bundled OHIF viewer: files in sub-folders were answered with index.html (`os.pathsep` for `/`).

And one addition: when a client fetches an image (`GET /datastore/image`, as Slicer does before the first click),
the infer tasks start reading and normalising it in the background, so the first click does not pay for it.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import sys
import threading

from fastapi import HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)

logger = logging.getLogger(__name__)


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
    """Warm the infer tasks' image caches with a local datastore image (a DICOMweb image would be downloaded)."""
    from monailabel.datastore.local import LocalDatastore
    from monailabel.interfaces.utils.app import app_instance

    try:
        instance = app_instance()
        datastore = instance.datastore()
        if not isinstance(datastore, LocalDatastore):
            return
        path = datastore.get_image_uri(image_id)
        if not path or not os.path.isfile(path):
            return
        for task in instance._infers.values():
            if hasattr(task, "volumes"):
                task.volumes.prefetch(path)
    except Exception as e:  # a warm-up must never break the request that triggered it
        logger.info("no prefetch for %s: %s", image_id, e)


async def _prefetch_fetched_images(request: Request, call_next):
    response = await call_next(request)
    if (request.method == "GET" and request.url.path.rstrip("/") == "/datastore/image" and response.status_code == 200
            and request.query_params.get("image")):
        threading.Thread(target=prefetch_image, args=(request.query_params["image"],), daemon=True).start()
    return response


def install() -> None:
    """Register the handlers on monailabel's FastAPI app if this process is the server."""
    server = sys.modules.get("monailabel.app")
    if server is None or not hasattr(server, "app"):
        return
    import monailabel.endpoints.ohif as ohif

    ohif.get_ohif = get_ohif  # the route looks the function up by name on every request
    app = server.app
    app.add_exception_handler(json.JSONDecodeError, _bad_json)
    app.add_exception_handler(MONAILabelException, _monailabel_error)
    app.middleware_stack = None  # rebuilt on the next request, now with these handlers
    app.middleware("http")(_prefetch_fetched_images)
    app.middleware_stack = None
