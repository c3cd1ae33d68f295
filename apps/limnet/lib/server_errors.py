"""Turn client mistakes that MONAI Label 0.8.5 answers with HTTP 500 into 4xx answers with a message.

MONAI Label's endpoints parse `params` with json.loads and raise MONAILabelException for unknown images or models;
both surface as 500. The handlers are registered on the running FastAPI app (server mode only).
"""

from __future__ import annotations

import json
import logging
import sys

from fastapi import Request
from fastapi.responses import JSONResponse
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


def install() -> None:
    """Register the handlers on monailabel's FastAPI app if this process is the server."""
    server = sys.modules.get("monailabel.app")
    if server is None or not hasattr(server, "app"):
        return
    app = server.app
    app.add_exception_handler(json.JSONDecodeError, _bad_json)
    app.add_exception_handler(MONAILabelException, _monailabel_error)
    app.middleware_stack = None  # rebuilt on the next request, now with these handlers
