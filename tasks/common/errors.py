"""Errors in the user's input end a command with one message and a non-zero status, not a traceback.

An error counts as the user's when it is a :class:`UserError`, or a ``ValueError``,
``FileNotFoundError`` or ``WeightsError`` raised by this project's own code (config values, paths,
data, checkpoints, weight files needed offline: those messages name the file or key and the fix).
Errors raised inside libraries keep their traceback, since they are more likely bugs.
``HYDRA_FULL_ERROR=1`` shows every traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from backbones.weights import WeightsError
from tasks import PROJECT_ROOT

log = logging.getLogger(__name__)
PROJECT_PACKAGES = ("backbones", "heads", "tasks")
INPUT_ERRORS = (ValueError, FileNotFoundError, WeightsError)  # WeightsError: offline, names the file
USER_ERROR_STATUS = 2
T = TypeVar("T")


class UserError(ValueError):
    """Bad input (path, config value, data, checkpoint), or a run stopped for a reason its message
    explains in full."""


def _raised_by_project(err: BaseException) -> bool:
    frame = err.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None:
        return False
    path = Path(frame.tb_frame.f_code.co_filename).resolve()
    return path.is_relative_to(PROJECT_ROOT) and path.relative_to(PROJECT_ROOT).parts[0] in PROJECT_PACKAGES


def user_error(err: BaseException) -> BaseException | None:
    """The user's error behind ``err`` (itself or what it wraps, e.g. in Hydra's instantiate), or None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, UserError) or (isinstance(err, INPUT_ERRORS) and _raised_by_project(err)):
            return err
        err = err.__cause__ or err.__context__
    return None


def in_sweep() -> bool:
    """True inside a job of ``-m`` (Hydra's multirun)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command's main function: a user error is logged as one message, then the process
    exits with status 2 (in a sweep, the job fails and the sweep goes on)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except Exception as err:
            cause = user_error(err)
            if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            log.error("%s\n(HYDRA_FULL_ERROR=1 shows the traceback)", cause)
            if in_sweep():  # the sweeper records the trial as failed and goes on with the next
                raise cause from None
            sys.exit(USER_ERROR_STATUS)

    return wrapper
