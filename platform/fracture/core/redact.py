"""Credentials out of anything shown to a person: `redact(text)` masks them in every URI it holds.

A tracking URI may carry a password (`http://user:secret@host`) or a token in its query
(`?token=...`), and MLflow's errors repeat the URI they failed on. Messages and log lines pass
through here first. No heavy imports: cli.py uses it before mlflow is loaded.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"

# `scheme://user:password@` or `scheme://token@`: everything between :// and the last @ of the
# authority (a password may itself hold @, but not / or whitespace).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s?#'\"]*@")
# Query parameters that carry a secret; a value runs to the next & or # or whitespace or quote.
_SECRET_PARAMS = (
    "token",
    "access_token",
    "auth",
    "password",
    "passwd",
    "pwd",
    "secret",
    "api_key",
    "apikey",
    "key",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
)
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;](?:" + "|".join(map(re.escape, _SECRET_PARAMS)) + r")=)[^&#\s'\"]*",
    re.IGNORECASE,
)


def redact(text: object) -> str:
    """`text` (a URI, a message, an exception) as a string with URI credentials masked.

    Examples:
        http://alice:s3cret@mlflow:5000      -> http://***@mlflow:5000
        https://host/api?token=abc&x=1       -> https://host/api?token=***&x=1
    """
    text = str(text)
    text = _USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)
    return _SECRET_QUERY.sub(lambda m: m["name"] + MASK, text)


def redact_config(raw: Any) -> Any:
    """A config dict (Config.to_dict()) with credentials masked in every string, for copies others read.

    What leaves the driver's own disk (MLflow's config.json artifacts, a checkpoint's state.json,
    which is uploaded with the registered model, --print-config) goes through here; the study's own
    config.yaml keeps the real URI, since --resume needs it.
    """
    if isinstance(raw, dict):
        return {k: redact_config(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [redact_config(v) for v in raw]
    return redact(raw) if isinstance(raw, str) else raw


class RedactingFilter(logging.Filter):
    """A handler filter that masks credentials in every record it lets through (ours, MLflow's, Ray's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters reuse exc_text once set (another handler may have set it already).
            record.exc_text = redact(record.exc_text or logging.Formatter().formatException(record.exc_info))
        return True
