"""Log formats: text lines, or one JSON object a line with the fields a call passes."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from datetime import datetime, timedelta

import pytest

from batchstash.service.logs import TEXT_FORMAT, AccessFields, log_config


def formatter(log_format: str) -> logging.Formatter:
    config = log_config("INFO", log_format)
    configurator = logging.config.DictConfigurator(config)
    made: logging.Formatter = configurator.configure_formatter(config["formatters"][log_format])
    return made


def record(name: str, msg: str, *args: object, **kwargs: object) -> logging.LogRecord:
    made = logging.getLogger(name).makeRecord(name, logging.INFO, "f.py", 1, msg, args, None)
    for key, value in kwargs.items():
        setattr(made, key, value)
    return made


def test_json_lines_carry_time_level_logger_message_and_the_extra_fields() -> None:
    line = formatter("json").format(
        record(
            "batchstash.x",
            "primed %d/%d",
            3,
            9,
            split="train",
            done=3,
            total=9,
            color_message="\x1b[1mprimed\x1b[0m",
        )
    )
    body = json.loads(line)
    assert "\n" not in line
    assert body.pop("message") == "primed 3/9"
    stamp = datetime.fromisoformat(body.pop("time"))
    assert stamp.utcoffset() == timedelta(0)
    assert body == {
        "level": "INFO",
        "logger": "batchstash.x",
        "split": "train",
        "done": 3,
        "total": 9,
    }


def test_an_exception_is_one_string_field() -> None:
    try:
        raise ValueError("bad vectorizer")
    except ValueError:
        made = record("batchstash.x", "prime failed")
        made.exc_info = sys.exc_info()
    body = json.loads(formatter("json").format(made))
    assert isinstance(body["exception"], str)
    assert (
        body["exception"].startswith("Traceback")
        and "ValueError: bad vectorizer" in body["exception"]
    )


def test_access_lines_get_fields_of_their_own() -> None:
    made = record(
        "uvicorn.access",
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5",
        "GET",
        "/v1/splits?x=1",
        "1.1",
        200,
    )
    assert AccessFields().filter(made)
    body = json.loads(formatter("json").format(made))
    assert body["message"] == '127.0.0.1:5 - "GET /v1/splits?x=1 HTTP/1.1" 200'
    assert (body["client"], body["method"], body["path"], body["status"]) == (
        "127.0.0.1:5",
        "GET",
        "/v1/splits?x=1",
        200,
    )


def test_text_stays_one_plain_line_and_uvicorn_shares_the_handler() -> None:
    made = record("batchstash.x", "hello %s", "you")
    assert formatter("text").format(made).endswith(" INFO batchstash.x: hello you")
    config = log_config("DEBUG", "text")
    assert config["formatters"] == {"text": {"format": TEXT_FORMAT}}
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        assert config["loggers"][name] == {"handlers": [], "level": "DEBUG", "propagate": True}
    assert config["root"] == {"handlers": ["default"], "level": "DEBUG"}
    assert "filters" not in config["handlers"]["default"]


@pytest.mark.parametrize("value", ["json", "JSON", "text"])
def test_the_setting_takes_either_format(value: str) -> None:
    from batchstash.service.config import Settings

    assert Settings(log_format=value).log_format == value.lower()
