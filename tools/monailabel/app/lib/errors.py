"""Errors that reach the REST client with their cause, as ``fastapi.HTTPException``.

MONAI Label 0.8.5 registers no exception handler on its FastAPI app (``monailabel/app.py``), so anything but
an ``HTTPException`` raised under an endpoint (its own ``MONAILabelException`` included) becomes a bare
``500 Internal Server Error`` whose cause is only in the server log. An app cannot add a handler either:
Starlette copies the handlers into its middleware stack when the stack is built, at the first ASGI event (the
lifespan start-up), and MONAI Label builds the app object (``app_instance``) inside that start-up, so a handler
registered from the app would never be used. What does reach the client is an ``HTTPException`` raised from
the app's methods, which the endpoints call directly (MONAI Label's own endpoints answer a missing image with
``HTTPException(404)`` the same way): the app's ``infer`` / ``train`` / datastore methods check the request
and translate what the tasks raise with :func:`reported`.

Status codes: 404 for a model, image or label that does not exist; 415 for an upload whose file type the
app cannot read; 422 for a request the app understood but cannot process (a bad parameter, a file that does
not decode, no labels to train on: MONAI Label's ``MONAILabelError.INVALID_INPUT``, and a bundle's
``DatalistError`` about the datastore's files); 500, with the cause's type and message, for everything else
(a fault of the server or of a bundle). The cause is the error that names what went wrong, not MONAI's
``RuntimeError("Failed to evaluate ...")`` wrappers around it (``tpp_components.bundle_checks.culprit``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from fastapi import HTTPException
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)
from tpp_components.bundle_checks import culprit
from tpp_components.data import DatalistError

__all__ = ["NOT_FOUND", "UNSUPPORTED", "UNPROCESSABLE", "SERVER_ERROR", "InvalidInput", "http_error", "reported"]

logger = logging.getLogger(__name__)

NOT_FOUND, UNSUPPORTED, UNPROCESSABLE, SERVER_ERROR = 404, 415, 422, 500
#: the most characters of a cause's message sent to the client (the server log keeps the whole traceback)
MAX_DETAIL = 2000


class InvalidInput(MONAILabelException):
    """A request (or what it uploads) that the app cannot process: answered with 422 and this message.

    A ``MONAILabelException`` with ``MONAILabelError.INVALID_INPUT``, so that it reads the same in a training
    task's log (where no client is waiting) as MONAI Label's own input errors.
    """

    def __init__(self, msg: str) -> None:
        super().__init__(MONAILabelError.INVALID_INPUT, msg)

    def __str__(self) -> str:
        return self.msg


def http_error(err: BaseException, context: str) -> HTTPException:
    """The ``HTTPException`` that tells the client about ``err``.

    Args:
        err: what a task or the datastore raised.
        context: what the request was doing, prefixed to the message (``"inference of 'm' on image 'x'"``).

    Returns:
        ``err`` itself if it already is an ``HTTPException``; else one with the status of the module's table
        and ``"<context>: <cause>"`` as detail (the cause's type is named, except for MONAI Label's own
        exceptions, whose message says what failed).
    """
    root = culprit(err)
    if isinstance(root, HTTPException):
        return root
    if isinstance(root, MONAILabelException):
        if isinstance(root, (ImageNotFoundException, LabelNotFoundException)):
            status = NOT_FOUND
        else:
            status = UNPROCESSABLE if root.error == MONAILabelError.INVALID_INPUT else SERVER_ERROR
        return HTTPException(status, detail=f"{context}: {root.msg}"[:MAX_DETAIL])
    status = UNPROCESSABLE if isinstance(root, DatalistError) else SERVER_ERROR
    return HTTPException(status, detail=f"{context}: {type(root).__name__}: {root}"[:MAX_DETAIL])


@contextlib.contextmanager
def reported(context: str) -> Iterator[None]:
    """Run the ``with`` body; re-raise what it raises as :func:`http_error` of it.

    A server error is logged with its traceback (the client gets the message only); a client error as one
    warning line.

    Example::

        with reported(f"inference of '{model}' on image '{image}'"):
            return super().infer(request, datastore)
    """
    try:
        yield
    except Exception as err:
        error = http_error(err, context)
        if error.status_code >= SERVER_ERROR:
            logger.exception("%d: %s", error.status_code, error.detail)
        else:
            logger.warning("%d: %s", error.status_code, error.detail)
        raise error from err
