"""A local ClickHouse HTTP endpoint over chDB, so that every process reaches one embedded engine.

One process owns the chDB data directory and runs each request on one of several chDB connections
to that directory (they run concurrently from a thread pool); clients use clickhouse-connect.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from anomaly.errors import EndpointError

# Run as ``python -m anomaly.endpoint`` this module is ``__main__``; log under its real name.
logger = logging.getLogger("anomaly.endpoint" if __name__ == "__main__" else __name__)

T = TypeVar("T")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_WORKERS = 8  # chDB connections, and so queries that run at once
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 15.0  # longer than SHUTDOWN_GRACE_SECONDS, so stop() rarely kills
DEFAULT_FORMAT = "TabSeparated"  # what ClickHouse answers in when a query names no format
DEFAULT_DATABASE = "default"
INSERT_CHUNK_BYTES = 1 << 20  # streamed insert data is handed to chDB in pieces of about this size
STATEMENT_PEEK_BYTES = 256 << 10  # ClickHouse's default max_query_size: the longest INSERT head
MAX_BUFFERED_BYTES = 256 << 20  # a request body that is not streamed into an INSERT is read whole
MAX_URL_BYTES = 1 << 20  # as ClickHouse's http_max_uri_size: settings and parameters ride in it
SHUTDOWN_GRACE_SECONDS = 5.0  # in-flight requests may finish for this long after SIGTERM
PARENT_POLL_SECONDS = 1.0

# URL parameters that steer the HTTP exchange rather than the query. They are accepted and not
# applied as settings (a server handles them itself; chDB would reject some as unknown).
_TRANSPORT_PARAMS = frozenset(
    """
    query query_id database default_format session_id session_timeout session_check
    client_protocol_version wait_end_of_query http_wait_end_of_query buffer_size
    http_response_buffer_size send_progress_in_http_headers http_headers_progress_interval_ms
    enable_http_compression http_zlib_compression_level
    http_native_compression_disable_checksumming_on_decompress
    cancel_http_readonly_queries_on_client_close add_http_cors_header stacktrace
    user password quota_key
    """.split()
)

# Formats whose names make chDB's Python API return Python objects instead of ClickHouse bytes.
_PYTHON_ONLY_FORMATS = frozenset({"dataframe", "datastore", "arrowtable"})

_BINARY_FORMAT_PREFIXES = ("native", "rowbinary", "parquet", "arrow", "orc", "avro", "msgpack")

# ClickHouse answers these exceptions with an HTTP status other than 500 (by symbolic name).
_HTTP_STATUS_BY_ERROR: dict[str, int] = {
    name: status
    for status, names in (
        (
            400,
            """
            BAD_ARGUMENTS CANNOT_COMPILE_REGEXP CANNOT_PARSE_TEXT CANNOT_PARSE_ESCAPE_SEQUENCE
            CANNOT_PARSE_QUOTED_STRING CANNOT_PARSE_DATE CANNOT_PARSE_DATETIME CANNOT_PARSE_NUMBER
            CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING CANNOT_PARSE_IPV4 CANNOT_PARSE_IPV6
            CANNOT_PARSE_INPUT_ASSERTION_FAILED CANNOT_PARSE_UUID DUPLICATE_COLUMN ILLEGAL_COLUMN
            UNKNOWN_ELEMENT_IN_AST UNKNOWN_TYPE_OF_AST_NODE THERE_IS_NO_COLUMN TOO_DEEP_AST
            TOO_BIG_AST UNEXPECTED_AST_STRUCTURE SYNTAX_ERROR INCORRECT_DATA TYPE_MISMATCH
            VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
            """,
        ),
        (401, "REQUIRED_PASSWORD"),
        (
            403,
            "UNKNOWN_USER WRONG_PASSWORD AUTHENTICATION_FAILED SET_NON_GRANTED_ROLE ACCESS_DENIED",
        ),
        (
            404,
            """
            UNKNOWN_TABLE UNKNOWN_FUNCTION UNKNOWN_IDENTIFIER UNKNOWN_TYPE UNKNOWN_STORAGE
            UNKNOWN_DATABASE UNKNOWN_SETTING UNKNOWN_DIRECTION_OF_SORTING
            UNKNOWN_AGGREGATE_FUNCTION UNKNOWN_FORMAT UNKNOWN_DATABASE_ENGINE
            UNKNOWN_TYPE_OF_QUERY UNKNOWN_ROLE
            """,
        ),
        (408, "TIMEOUT_EXCEEDED"),
        (411, "HTTP_LENGTH_REQUIRED"),
        (413, "QUERY_IS_TOO_LARGE"),
        (415, "UNSUPPORTED_MEDIA_TYPE"),
        (501, "NOT_IMPLEMENTED"),
        (503, "SOCKET_TIMEOUT CANNOT_OPEN_FILE CANNOT_SCHEDULE_TASK"),
    )
    for name in names.split()
}

_CHDB_ERROR = re.compile(r"Code: (?P<code>\d+)\. (?P<text>DB::Exception: .*)", re.DOTALL)
_ERROR_NAME = re.compile(r"\((?P<name>[A-Z][A-Z0-9_]+)\)(?:\s*\(version [^)]*\))?\s*$")
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*;?\s*$", re.IGNORECASE)
_IDENT = rb'(?:[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)+`|"(?:[^"\\]|\\.)+")'
# The head of "INSERT INTO [db.]table [(columns)] FORMAT name", then where its data starts:
# after the first newline if the whitespace before the data holds one, else after all of it.
_INSERT_HEAD = re.compile(
    rb"\s*(?P<statement>INSERT\s+INTO\s+(?:TABLE\s+)?"
    + _IDENT
    + rb"(?:\s*\.\s*"
    + _IDENT
    + rb")?(?:\s*\([^()]*\))?)"
    + rb"\s*(?<=[\s)])FORMAT\s+(?P<format>[A-Za-z][A-Za-z0-9_]*)"
    + rb"(?:[ \t\r\f\v]*\n|[ \t\r\f\v]*)",
    re.IGNORECASE,
)


class _ClickHouseError(Exception):
    """An error to answer the way a ClickHouse server does: a code, a message, an HTTP status."""

    def __init__(self, code: int, message: str, name: str | None = None) -> None:
        if name is not None:
            message = f"DB::Exception: {message} ({name})"
        super().__init__(message)
        self.code = code
        self.text = message
        found = _ERROR_NAME.search(message)
        self.name = name or (found.group("name") if found else None)

    @property
    def status(self) -> int:
        return _HTTP_STATUS_BY_ERROR.get(self.name or "", 500)

    @property
    def body(self) -> str:
        return f"Code: {self.code}. {self.text}\n"


def _error_from_chdb(exc: BaseException) -> _ClickHouseError:
    """Recover ClickHouse's code and message from a chDB exception (its text carries both)."""
    found = _CHDB_ERROR.search(str(exc))
    if found is None:
        return _ClickHouseError(1001, f"{type(exc).__name__}: {exc}", "STD_EXCEPTION")
    return _ClickHouseError(int(found.group("code")), found.group("text").rstrip())


# ---------------------------------------------------------------------------------------------
# Request bodies


class _FrameDecoder:
    """Undo one Content-Encoding incrementally; clients send several frames back to back."""

    def __init__(self, encoding: str, new: Callable[[], Any], errors: tuple[type[Exception], ...]):
        self.encoding = encoding
        self._new = new
        self._errors = errors
        self._current: Any = None

    def feed(self, data: bytes) -> bytes:
        out = []
        try:
            while data:
                if self._current is None:
                    self._current = self._new()
                out.append(self._current.decompress(data))
                if self._current.eof:
                    data = self._current.unused_data
                    self._current = None
                else:
                    data = b""
        except self._errors as exc:
            raise _ClickHouseError(
                271, f"cannot decode the {self.encoding} request body: {exc}", "CANNOT_DECOMPRESS"
            ) from None
        return b"".join(out)

    def finish(self) -> None:
        if self._current is not None:
            raise _ClickHouseError(
                271, f"the {self.encoding} request body ends inside a frame", "CANNOT_DECOMPRESS"
            )


_Factory = tuple[Callable[[], Any], tuple[type[Exception], ...]]  # a new decoder, its errors


def _decoder_factories() -> dict[str, _Factory]:
    """The Content-Encodings this process can decode (lz4 and zstd only where installed).

    Brotli is left out: clickhouse-connect sends it only where the brotli package is installed,
    and such a body is refused by name rather than guessed at.
    """
    factories: dict[str, _Factory] = {
        "gzip": (lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), (zlib.error,)),
        "deflate": (lambda: zlib.decompressobj(zlib.MAX_WBITS), (zlib.error,)),
    }
    with contextlib.suppress(ImportError):
        import lz4.frame

        factories["lz4"] = (lz4.frame.LZ4FrameDecompressor, (RuntimeError,))
    zstd: Any = None
    with contextlib.suppress(ImportError):
        if sys.version_info >= (3, 14):
            from compression import zstd
        else:
            from backports import zstd
    if zstd is not None:
        factories["zstd"] = (zstd.ZstdDecompressor, (zstd.ZstdError,))
    return factories


_DECODERS = _decoder_factories()


def _decoder_for(encoding: str) -> _FrameDecoder | None:
    """A decoder for a Content-Encoding header, or None for identity; unknown ones are refused."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in _DECODERS:
        known = ", ".join(sorted(_DECODERS))
        raise _ClickHouseError(
            89,
            f"unsupported Content-Encoding {encoding!r} for the request body; "
            f"this endpoint decodes {known}",
            "UNKNOWN_COMPRESSION_METHOD",
        )
    new, errors = _DECODERS[encoding]
    return _FrameDecoder(encoding, new, errors)


async def _drain(stream: Any) -> None:
    """Read and drop what the client is still sending, so it sees our answer, not a reset."""
    with contextlib.suppress(Exception):
        while await stream.readany():
            pass


class _Body:
    """The request body, decoded, read piece by piece so an INSERT can stream."""

    def __init__(self, request: web.Request) -> None:
        self._stream = request.content
        self._decoder = _decoder_for(request.headers.get("Content-Encoding", ""))
        self.encoding = self._decoder.encoding if self._decoder is not None else "identity"
        self._done = not request.body_exists

    async def read(self) -> bytes:
        """The next decoded piece, or b"" at the end."""
        while not self._done:
            chunk = await self._stream.readany()
            if not chunk:
                self._done = True
                if self._decoder is not None:
                    self._decoder.finish()
                return b""
            data = self._decoder.feed(chunk) if self._decoder is not None else chunk
            if data:
                return data
        return b""

    async def read_all(self, limit: int) -> bytes:
        pieces = bytearray()
        while piece := await self.read():
            pieces += piece
            if len(pieces) > limit:
                raise _ClickHouseError(
                    229,
                    f"request body over {limit} bytes; only an INSERT ... FORMAT body may be "
                    "longer, and it is streamed",
                    "QUERY_IS_TOO_LARGE",
                )
        return bytes(pieces)


# ---------------------------------------------------------------------------------------------
# chDB connections


@dataclass
class _Slot:
    """One chDB connection and the session state this endpoint put on it."""

    conn: Any
    database: str = DEFAULT_DATABASE
    settings: dict[str, str] = field(default_factory=dict)
    dirty: bool = False


@dataclass
class _Statement:
    """What one HTTP request asks chDB to do."""

    query_id: str
    sql: str
    params: dict[str, str]
    settings: dict[str, str]
    database: str
    output_format: str
    readonly: bool


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _prepare(slot: _Slot, database: str, settings: Mapping[str, str]) -> None:
    """Give the connection this request's database and settings, undoing the last request's.

    Settings are applied with SET on the connection (not a SETTINGS clause) because DDL, INSERT
    and statements ending in FORMAT cannot all take a trailing clause.
    """
    stale = [name for name in slot.settings if name not in settings]
    changed = {name: value for name, value in settings.items() if slot.settings.get(name) != value}
    if database == slot.database and not stale and not changed:
        return

    was_dirty = slot.dirty
    slot.dirty = True  # until the statements below succeed, the connection's state is unknown

    if database != slot.database:
        slot.conn.query(f"USE {_quote_identifier(database)}")
        slot.database = database

    if stale or changed:
        assignments = [f"{name} = DEFAULT" for name in stale]
        # readonly last: once set it forbids changing itself, so such a connection is replaced.
        assignments += [
            f"{name} = {_quote_literal(value)}"
            for name, value in sorted(changed.items(), key=lambda item: item[0] == "readonly")
        ]
        slot.conn.query("SET " + ", ".join(assignments))
        for name in stale:
            del slot.settings[name]
        slot.settings.update(changed)

    slot.dirty = was_dirty or "readonly" in settings


def _classify(slot: _Slot, sql: str) -> tuple[str, int]:
    """The statement's class and count from chDB's parser; ('UNKNOWN', 1) where chDB has none.

    classify_query sits on chDB's inner connection object, which is not public API. Without it
    every connection is replaced after its request (correct, slower) and multi-statement
    requests are not refused.
    """
    classify = getattr(getattr(slot.conn, "_conn", None), "classify_query", None)
    if classify is None:
        return "UNKNOWN", 1
    report = classify(sql)
    return report["query_class"].name, int(report["statement_count"])


def _run_statement(slot: _Slot, statement: _Statement) -> Any:
    """Run one query on a connection (in a pool thread) and return chDB's raw result."""
    query_class, count = _classify(slot, statement.sql)
    if count > 1:
        raise _ClickHouseError(
            62,
            f"Multi-statements are not allowed: the request holds {count} statements",
            "SYNTAX_ERROR",
        )
    if query_class != "READ_ONLY":
        # SET, USE, temporary tables and what chDB cannot classify may change the connection's
        # session: replace it afterwards, as a server forgets a request's session at its end.
        slot.dirty = True

    _prepare(slot, statement.database, statement.settings)

    return slot.conn.query(statement.sql, statement.output_format, params=statement.params)


def _begin_insert(slot: _Slot, statement: _Statement, head: str, input_format: str) -> Any:
    _prepare(slot, statement.database, statement.settings)
    return slot.conn.send_insert(head, input_format)


def _cancel_insert(inserter: Any) -> None:
    with contextlib.suppress(Exception):
        inserter.cancel()


def _lock_holder(data_dir: Path) -> str | None:
    """Who holds chDB's lock on ``data_dir`` ("PID: n" from its status file), or None if free.

    chDB itself only writes "Cannot lock file" to stderr and raises a vaguer error.
    """
    import fcntl

    status = data_dir / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with contextlib.suppress(OSError, IndexError):
            return status.read_text().splitlines()[0]
        return "unknown process"
    finally:
        os.close(fd)
    return None


def _probe_lock(data_dir: Path) -> None:
    """Fail clearly, naming the directory, if another process holds it."""
    holder = _lock_holder(data_dir)
    if holder is not None:
        raise EndpointError(
            f"chDB data directory {str(data_dir)!r} is in use by another process ({holder}): "
            "chDB cannot lock file 'status'; connect to that process's endpoint instead "
            "(running_endpoint) or stop it"
        )


class _Engine:
    """The chDB connections of this process, lent to one request at a time."""

    def __init__(self, data_dir: Path, workers: int) -> None:
        if workers < 1:
            raise EndpointError(f"workers={workers!r}: the endpoint needs at least 1 worker")
        self.data_dir = data_dir
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="chdb-endpoint")
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        self._anchor: Any = None
        self.timezone = "UTC"
        self.version = ""

    def open(self) -> None:
        """Open the data directory: one anchor connection that keeps the engine up, then a pool."""
        import chdb

        self.data_dir.mkdir(parents=True, exist_ok=True)
        _probe_lock(self.data_dir)
        try:
            self._anchor = chdb.connect(str(self.data_dir))
        except RuntimeError as exc:
            raise EndpointError(
                f"cannot open chDB data directory {str(self.data_dir)!r}: {exc} "
                "(another process may hold its lock: chDB then says 'Cannot lock file')"
            ) from exc

        info = self._anchor.query("SELECT timezone(), version()", "TabSeparated")
        self.timezone, self.version = info.bytes().decode().strip().split("\t")

        for _ in range(self.workers):
            self._idle.put_nowait(_Slot(self._new_connection()))

    def _new_connection(self) -> Any:
        import chdb

        return chdb.connect(str(self.data_dir))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        while not self._idle.empty():
            with contextlib.suppress(Exception):
                self._idle.get_nowait().conn.close()
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[_Slot]:
        """Borrow a connection; one whose session state is uncertain is replaced on return."""
        slot = await self._idle.get()
        try:
            yield slot
        finally:
            if slot.dirty:
                with contextlib.suppress(Exception):
                    slot.conn.close()
                slot = _Slot(self._new_connection())
            self._idle.put_nowait(slot)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking chDB call in the pool; chDB's errors become ClickHouse answers."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except _ClickHouseError:
            raise
        except RuntimeError as exc:  # chdb.ChdbError and the streaming inserter's errors
            raise _error_from_chdb(exc) from None


# ---------------------------------------------------------------------------------------------
# HTTP


def _content_type(fmt: str) -> str:
    name = fmt.lower()
    if name.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if name.startswith("csv"):
        header = "present" if "withnames" in name else "absent"
        return f"text/csv; charset=UTF-8; header={header}"
    if name.startswith("json"):
        return "application/json; charset=UTF-8"
    if name.startswith(_BINARY_FORMAT_PREFIXES):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


def _summary(
    read_rows: int = 0,
    read_bytes: int = 0,
    written_rows: int = 0,
    written_bytes: int = 0,
    result_bytes: int = 0,
    elapsed: float = 0.0,
) -> str:
    """X-ClickHouse-Summary as a server sends it: every value a string, unknown ones "0"."""
    return json.dumps(
        {
            "read_rows": str(read_rows),
            "read_bytes": str(read_bytes),
            "written_rows": str(written_rows),
            "written_bytes": str(written_bytes),
            "total_rows_to_read": "0",
            "result_rows": "0",
            "result_bytes": str(result_bytes),
            "elapsed_ns": str(int(elapsed * 1e9)),
        },
        separators=(",", ":"),
    )


class _Handler:
    """Serves the part of ClickHouse's HTTP interface that clickhouse-connect uses."""

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.display_name = f"chdb@{socket.gethostname()}"
        self._warned_session = False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BUFFERED_BYTES)
        app.router.add_get("/ping", self.ping)
        app.router.add_route("GET", "/", self.root)
        app.router.add_route("POST", "/", self.root)
        return app

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n", content_type="text/plain")

    async def root(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        query_id = request.query.get("query_id") or str(uuid.uuid4())
        try:
            response = await self._answer(request, _Body(request), query_id)
        except _ClickHouseError as exc:
            await _drain(request.content)
            response = self._error(exc, query_id)
        except ConnectionError as exc:  # the client left mid-body; an INSERT was cancelled
            logger.warning("request %s: client connection lost before the body ended", query_id)
            response = self._error(_error_from_chdb(exc), query_id)
        except Exception as exc:  # a fault of the endpoint itself: still answer like a server
            logger.exception("request %s failed inside the endpoint", query_id)
            await _drain(request.content)
            response = self._error(_error_from_chdb(exc), query_id)

        logger.debug(
            "%s %s -> %d in %.1f ms",
            request.method,
            query_id,
            response.status,
            (time.perf_counter() - started) * 1000,
        )
        return response

    def _headers(self, query_id: str, fmt: str) -> dict[str, str]:
        return {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Timezone": self.engine.timezone,
            "X-ClickHouse-Server-Display-Name": self.display_name,
        }

    def _error(self, exc: _ClickHouseError, query_id: str) -> web.Response:
        headers = self._headers(query_id, DEFAULT_FORMAT)
        headers["X-ClickHouse-Exception-Code"] = str(exc.code)
        logger.debug("query %s answered with code %d: %s", query_id, exc.code, exc.text)
        return web.Response(
            status=exc.status, text=exc.body, content_type="text/plain", headers=headers
        )

    async def _answer(self, request: web.Request, body: _Body, query_id: str) -> web.Response:
        """Read the statement, then stream an INSERT's data or run the query whole."""
        statement, query_text = await self._statement(request, query_id)

        head = b""
        if query_text:
            head = query_text.encode() + b"\n"
        head, insert, done = await self._peek(head, body)

        if insert is not None:
            if statement.readonly:
                raise self._readonly_error()
            data = head[insert.end() :]
            sql_head = insert.group("statement").decode("utf-8", errors="strict")
            return await self._insert(
                statement, sql_head, insert.group("format").decode(), data, body
            )

        rest = b"" if done else await body.read_all(MAX_BUFFERED_BYTES - len(head))
        try:
            statement.sql = (head + rest).decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise _ClickHouseError(
                36, f"the query is not valid UTF-8 (at byte {exc.start})", "BAD_ARGUMENTS"
            ) from None

        if not statement.sql:
            if request.method == "GET":
                return web.Response(text="Ok.\n", content_type="text/plain")
            raise _ClickHouseError(62, "Empty query", "SYNTAX_ERROR")
        return await self._query(statement)

    async def _statement(self, request: web.Request, query_id: str) -> tuple[_Statement, str]:
        """Split URL parameters (and form fields) into SQL, bound parameters and settings."""
        fields: dict[str, str] = dict(request.query.items())
        query_text = fields.get("query", "")

        if request.content_type == "multipart/form-data":
            form = await request.post()
            for key, value in form.items():
                if not isinstance(value, str):  # a file: an external table
                    raise _ClickHouseError(
                        48,
                        f"form field {key!r} is a file: external data tables are not supported "
                        "by this endpoint",
                        "NOT_IMPLEMENTED",
                    )
                if key == "query":
                    query_text = "\n".join(part for part in (query_text, value) if part)
                elif key.startswith("param_"):
                    fields[key] = value

        for flag in ("compress", "decompress"):
            if fields.get(flag, "0") not in ("", "0"):
                raise _ClickHouseError(
                    89,
                    f"{flag}={fields[flag]!r} asks for ClickHouse's native block compression, "
                    "which this endpoint does not speak; use HTTP Content-Encoding or none",
                    "UNKNOWN_COMPRESSION_METHOD",
                )
        if "session_id" in fields and not self._warned_session:
            self._warned_session = True
            logger.warning(
                "session_id %r is accepted but sessions are not kept: SET, USE and temporary "
                "tables last for one request only",
                fields["session_id"],
            )

        params = {key[6:]: value for key, value in fields.items() if key.startswith("param_")}
        settings = {}
        for key, value in fields.items():
            if key.startswith("param_") or key in _TRANSPORT_PARAMS:
                continue
            if not _SETTING_NAME.fullmatch(key):
                raise _ClickHouseError(
                    115, f"Unknown setting {key!r}: not a plain setting name", "UNKNOWN_SETTING"
                )
            settings[key] = value

        readonly = request.method == "GET"
        if readonly:  # as a server does: a GET request cannot change data
            settings["readonly"] = "1" if settings.get("readonly") == "1" else "2"

        output_format = (
            fields.get("default_format")
            or request.headers.get("X-ClickHouse-Format")
            or DEFAULT_FORMAT
        )
        if output_format.lower() in _PYTHON_ONLY_FORMATS:
            raise _ClickHouseError(73, f"Unknown output format {output_format!r}", "UNKNOWN_FORMAT")
        database = (
            fields.get("database")
            or request.headers.get("X-ClickHouse-Database")
            or DEFAULT_DATABASE
        )

        logger.debug(
            "%s %s database=%s params=%s settings=%s transport=%s",
            request.method,
            query_id,
            database,
            sorted(params),  # names only: values may be customer data
            settings,
            sorted(key for key in fields if key in _TRANSPORT_PARAMS),
        )
        statement = _Statement(query_id, "", params, settings, database, output_format, readonly)
        return statement, query_text

    async def _peek(self, head: bytes, body: _Body) -> tuple[bytes, re.Match[bytes] | None, bool]:
        """Read until the text says whether this is an INSERT ... FORMAT whose data follows."""
        done = False
        while True:
            found = _INSERT_HEAD.match(head)
            if found is not None and (found.end() < len(head) or done):
                return head, found, done

            start = head.lstrip()[:6]
            could_be_insert = len(start) < 6 or start.upper() == b"INSERT"
            if done or not could_be_insert or len(head) > STATEMENT_PEEK_BYTES:
                return head, None, done

            piece = await body.read()
            if piece:
                head += piece
            else:
                done = True

    @staticmethod
    def _readonly_error() -> _ClickHouseError:
        return _ClickHouseError(
            164,
            "Cannot execute query in readonly mode: over HTTP, method GET is read-only; "
            "use POST to change data",
            "READONLY",
        )

    async def _query(self, statement: _Statement) -> web.Response:
        trailing = _TRAILING_FORMAT.search(statement.sql)
        fmt = trailing.group(1) if trailing else statement.output_format
        logger.debug("query %s: %.300s", statement.query_id, statement.sql)

        async with self.engine.slot() as slot:
            result = await self.engine.call(_run_statement, slot, statement)

        data = result.bytes()
        headers = self._headers(statement.query_id, fmt)
        headers["X-ClickHouse-Summary"] = _summary(
            result.rows_read(),
            result.bytes_read(),
            result.rows_written(),
            result.bytes_written(),
            len(data),
            result.elapsed(),
        )
        headers["Content-Type"] = _content_type(fmt)
        return web.Response(body=data, headers=headers)

    async def _insert(
        self, statement: _Statement, sql_head: str, input_format: str, data: bytes, body: _Body
    ) -> web.Response:
        """Stream the body into chDB's INSERT, a megabyte at a time, without holding it whole."""
        statement.sql = f"{sql_head} FORMAT {input_format}"
        logger.debug(
            "insert %s: %s (body encoding %s)", statement.query_id, statement.sql, body.encoding
        )

        async with self.engine.slot() as slot:
            inserter = await self.engine.call(
                _begin_insert, slot, statement, sql_head, input_format
            )
            try:
                pending = bytearray(data)
                while True:
                    piece = await body.read()
                    pending += piece
                    if pending and (not piece or len(pending) >= INSERT_CHUNK_BYTES):
                        await self.engine.call(inserter.append, bytes(pending))
                        pending.clear()
                    if not piece:
                        break
                result = await self.engine.call(inserter.finish)
            except BaseException:
                slot.dirty = True
                await self.engine.call(_cancel_insert, inserter)
                raise

        headers = self._headers(statement.query_id, statement.output_format)
        headers["X-ClickHouse-Summary"] = _summary(
            written_rows=result.rows_written,
            written_bytes=result.bytes_written,
            elapsed=result.elapsed,
        )
        return web.Response(body=b"", headers=headers, content_type="text/plain")


# ---------------------------------------------------------------------------------------------
# Lifecycle


def _loopback(host: str) -> str:
    """The IPv4 loopback address to bind for ``host``; anything else is refused."""
    address = "127.0.0.1" if host == "localhost" else host
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    if ip is None or ip.version != 4 or not ip.is_loopback:
        raise EndpointError(
            f"host {host!r} is not an IPv4 loopback address: the embedded endpoint listens on "
            "127.0.0.1 (or another 127.x.x.x address) only"
        )
    return address


def state_file(data_dir: str | os.PathLike[str]) -> Path:
    """Where the endpoint serving ``data_dir`` records its URL and pid: beside the directory.

    Beside rather than inside, so the file never mixes with chDB's own files.
    """
    path = Path(data_dir).resolve()
    return path.parent / f"{path.name}.endpoint.json"


def _log_file(data_dir: Path) -> Path:
    return data_dir.parent / f"{data_dir.name}.endpoint.log"


def _write_state(path: Path, state: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(partial, path)


def _remove_state(path: Path, pid: int) -> None:
    """Remove the state file if it still describes ``pid`` (a newer endpoint may own it now)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, bound before chDB opens so a taken port fails fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise EndpointError(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


async def _serve_async(
    data_dir: Path,
    host: str,
    port: int,
    ready_file: Path,
    workers: int,
    on_ready: Callable[[str], None] | None,
    exit_with_parent: bool,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    parent = os.getppid()

    async with contextlib.AsyncExitStack() as resources:  # released in reverse order
        sock = resources.enter_context(_listen(host, port))
        url = f"http://{host}:{sock.getsockname()[1]}"

        engine = _Engine(data_dir, workers)
        engine.open()
        resources.callback(engine.close)

        runner = web.AppRunner(
            _Handler(engine).app(),
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
            auto_decompress=False,  # bodies are decoded here: every encoding gets a clear answer
            max_line_size=MAX_URL_BYTES,
        )
        await runner.setup()
        resources.push_async_callback(runner.cleanup)
        await web.SockSite(runner, sock).start()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
            resources.callback(loop.remove_signal_handler, signum)

        _write_state(
            ready_file,
            {
                "url": url,
                "pid": os.getpid(),
                "host": host,
                "port": sock.getsockname()[1],
                "data_dir": str(data_dir),
                "started_at": time.time(),
                "clickhouse_version": engine.version,
            },
        )
        resources.callback(_remove_state, ready_file, os.getpid())
        logger.info(
            "serving chDB %s (ClickHouse %s) at %s, pid %d, %d workers",
            data_dir,
            engine.version,
            url,
            os.getpid(),
            workers,
        )
        if on_ready is not None:
            on_ready(url)

        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PARENT_POLL_SECONDS)
            if exit_with_parent and os.getppid() != parent and not live_guests(data_dir):
                logger.info("the process that started this endpoint is gone, and no run "
                            "reusing it is left; stopping")  # fmt: skip
                stop.set()
        logger.info("stopping the endpoint for %s", data_dir)

    logger.info("stopped the endpoint for %s", data_dir)


def serve(
    data_dir: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    port: int = 0,
    ready_file: str | os.PathLike[str] | None = None,
    *,
    workers: int = DEFAULT_WORKERS,
    on_ready: Callable[[str], None] | None = None,
    exit_with_parent: bool = False,
) -> None:
    """Serve ``data_dir`` over ClickHouse's HTTP interface until SIGTERM or SIGINT.

    Run it in the main thread of a process of its own (``python -m anomaly.endpoint`` or
    :class:`EmbeddedEndpoint`): chDB locks the directory to this process, and the signal
    handlers need the main thread.

    Parameters
    ----------
    data_dir:
        The chDB data directory; created if missing.
    host:
        An IPv4 loopback address. Anything else is refused: the endpoint has no authentication.
    port:
        The TCP port; 0 picks a free one.
    ready_file:
        Where to write the JSON state (url, pid, port, data_dir) once requests are served;
        :func:`state_file` by default, which is where :func:`running_endpoint` looks.
    workers:
        chDB connections, and so how many queries run at once; further requests wait.
    on_ready:
        Called with the URL once the endpoint serves.
    exit_with_parent:
        Stop when the process that started this one exits, so a crashed owner leaves no orphan.

    Raises
    ------
    EndpointError
        The host is not loopback, the port is taken, or the directory is held by another process.
    """
    bind = _loopback(host)
    if not 0 <= port <= 65535:
        raise EndpointError(f"port {port!r} is not a TCP port (0 picks a free one)")
    directory = Path(data_dir).resolve()
    target = Path(ready_file).resolve() if ready_file is not None else state_file(directory)

    asyncio.run(_serve_async(directory, bind, port, target, workers, on_ready, exit_with_parent))


def _opener() -> urllib.request.OpenerDirector:
    # No proxies: the endpoint is on loopback, and an HTTP_PROXY variable must not reroute it.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _ping(url: str, timeout: float = 2.0) -> bool:
    """True if ``url`` (a loopback URL) answers /ping as ClickHouse does."""
    host = urllib.parse.urlparse(url).hostname or ""
    try:
        _loopback(host)
    except EndpointError:
        return False
    try:
        with _opener().open(f"{url}/ping", timeout=timeout) as response:
            return bool(response.status == 200 and response.read() == b"Ok.\n")
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _process_alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class EmbeddedEndpoint:
    """An endpoint in a child process, owned by this one: start it, use its URL, stop it.

    The child stops by itself if this process dies, and :meth:`stop` runs at interpreter exit,
    so no endpoint outlives its owner.

    Examples
    --------
    >>> with EmbeddedEndpoint() as endpoint:  # doctest: +SKIP
    ...     client = clickhouse_connect.get_client(dsn=endpoint.start("data/chdb"))
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None
        self._data_dir: Path | None = None

    @property
    def url(self) -> str:
        """The endpoint's base URL, e.g. ``http://127.0.0.1:41234``."""
        if self._url is None:
            raise EndpointError("the endpoint is not started: call start(data_dir) first")
        return self._url

    @property
    def port(self) -> int:
        """The TCP port the endpoint listens on (127.0.0.1)."""
        return int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int | None:
        """The endpoint process's id while this object owns one, else None."""
        return self._process.pid if self._process is not None else None

    @property
    def data_dir(self) -> Path | None:
        """The chDB data directory this endpoint serves (or last served)."""
        return self._data_dir

    def alive(self) -> bool:
        """True while the child runs and answers /ping."""
        if self._process is None or self._process.poll() is not None or self._url is None:
            return False
        return _ping(self._url)

    def start(
        self,
        data_dir: str | os.PathLike[str],
        port: int = 0,
        timeout: float = DEFAULT_START_TIMEOUT,
        *,
        workers: int = DEFAULT_WORKERS,
    ) -> str:
        """Start ``python -m anomaly.endpoint`` on ``data_dir`` and wait until /ping answers.

        Returns
        -------
        str
            The URL to hand to clickhouse-connect (``get_client(dsn=url)``).

        Raises
        ------
        EndpointError
            Already started, or the child exited or did not answer in ``timeout`` seconds; the
            message carries the end of its log (``<data_dir>.endpoint.log``).
        """
        if self._process is not None and self._process.poll() is None:
            raise EndpointError(f"this endpoint already serves {self._data_dir} at {self._url}")

        directory = Path(data_dir).resolve()
        directory.parent.mkdir(parents=True, exist_ok=True)
        ready = state_file(directory)
        log_path = _log_file(directory)
        command = [
            sys.executable,
            "-m",
            "anomaly.endpoint",
            "--data-dir",
            str(directory),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--exit-with-parent",
        ]
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (package_root, env.get("PYTHONPATH", "")) if part
        )

        with open(log_path, "ab") as log:
            log_start = log.tell()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,  # a Ctrl-C meant for the owner goes through stop()
            )
        self._data_dir = directory
        atexit.register(self.stop)

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._forget()
                raise EndpointError(
                    f"the endpoint for {str(directory)!r} exited with code {code}: "
                    f"{_log_tail(log_path, log_start)}"
                )
            url = self._ready_url(ready)
            if url is not None and _ping(url):
                self._url = url
                logger.info("endpoint for %s at %s (pid %d)", directory, url, self._process.pid)
                return url
            time.sleep(0.05)

        self.stop()
        raise EndpointError(
            f"the endpoint for {str(directory)!r} did not answer within {timeout:g} s: "
            f"{_log_tail(log_path, log_start)}"
        )

    def _ready_url(self, ready: Path) -> str | None:
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(ready.read_text())
            if self._process is not None and state.get("pid") == self._process.pid:
                return str(state["url"])
        return None

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM the child, wait for it to finish its requests, and kill it if it will not."""
        process = self._process
        if process is None:
            return

        guests = [pid for pid in (live_guests(self._data_dir) if self._data_dir else [])
                  if pid != os.getpid()]  # fmt: skip
        if process.poll() is None and guests:
            logger.info("endpoint pid %d left serving %d other run(s) (pids %s); it stops "
                        "after them", process.pid, len(guests), guests)  # fmt: skip
            self._forget()
            return

        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "endpoint pid %d ignored SIGTERM for %g s; killing", process.pid, timeout
                )
                process.kill()
                process.wait()

        if self._data_dir is not None:
            _remove_state(state_file(self._data_dir), process.pid)
        logger.info("stopped endpoint pid %d (exit code %s)", process.pid, process.returncode)
        self._forget()

    def _forget(self) -> None:
        atexit.unregister(self.stop)
        self._process = None
        self._url = None

    def __enter__(self) -> EmbeddedEndpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _log_tail(path: Path, start: int, limit: int = 2000) -> str:
    with contextlib.suppress(OSError):
        with open(path, "rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace").strip()
            return text[-limit:] or "(no output)"
    return "(no log)"


def _guests_dir(data_dir: Path) -> Path:
    return data_dir.parent / f"{data_dir.name}.endpoint.guests"


def live_guests(data_dir: str | os.PathLike[str]) -> list[int]:
    """Process ids of the live processes reusing the endpoint of ``data_dir`` (dead ones'
    registrations are removed on the way)."""
    folder = _guests_dir(Path(data_dir).resolve())
    alive = []
    for entry in folder.glob("*") if folder.is_dir() else []:
        pid = int(entry.name) if entry.name.isdigit() else -1
        if pid > 0 and _process_alive(pid):
            alive.append(pid)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    return alive


class GuestLease:
    """A run's registration as a user of an endpoint another process started.

    While any guest lives, the endpoint outlives its owner: the owner's :meth:`stop` leaves
    it serving, and it stops by itself once the owner and every guest are gone.
    """

    def __init__(self, data_dir: Path) -> None:
        folder = _guests_dir(data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self._path = folder / str(os.getpid())
        self._path.touch()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._path.unlink()


def running_endpoint(data_dir: str | os.PathLike[str]) -> str | None:
    """The URL of an endpoint already serving ``data_dir``, or None.

    It counts only if its state file is there, its process lives and /ping answers; a stale
    state file is removed, so a crashed endpoint does not block the next one.
    """
    directory = Path(data_dir).resolve()
    path = state_file(directory)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("cannot read endpoint state %s: %s", path, exc)
        return None

    try:
        state = json.loads(text)
        url, pid, served = str(state["url"]), int(state["pid"]), state["data_dir"]
    except (ValueError, KeyError, TypeError):
        url, pid, served = "", -1, None

    if served == str(directory) and _process_alive(pid) and _ping(url):
        return url

    logger.info("removing stale endpoint state %s (pid %s)", path, pid)
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            path.unlink()
    return None


def ensure_endpoint(
    data_dir: str | os.PathLike[str], timeout: float = DEFAULT_START_TIMEOUT
) -> tuple[str, EmbeddedEndpoint | GuestLease]:
    """Reuse the endpoint serving ``data_dir``, or start one.

    Returns
    -------
    tuple
        The URL, and what to stop when done: the :class:`EmbeddedEndpoint` this call started,
        or a :class:`GuestLease` on the one it reused (which keeps that endpoint serving
        until this process stops the lease or dies, even if its owner finishes first).
    """
    url = running_endpoint(data_dir)
    if url is not None:
        return url, GuestLease(Path(data_dir).resolve())

    endpoint = EmbeddedEndpoint()
    try:
        return endpoint.start(data_dir, timeout=timeout), endpoint
    except EndpointError:
        # Another process may have started one meanwhile and won the directory's lock:
        # wait for it to serve rather than fail.
        deadline = time.monotonic() + timeout
        while _lock_holder(Path(data_dir).resolve()) is not None:
            url = running_endpoint(data_dir)
            if url is not None:
                return url, GuestLease(Path(data_dir).resolve())
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        raise


def main(argv: list[str] | None = None) -> int:
    """Command line: serve a data directory in the foreground and print its URL."""
    parser = argparse.ArgumentParser(
        prog="python -m anomaly.endpoint",
        description=(
            "Serve a chDB data directory over ClickHouse's HTTP interface on 127.0.0.1, so that "
            "several processes (Ray actors, Spark workers, notebooks) share one embedded "
            "ClickHouse through clickhouse-connect. Prints the URL once ready; stops on "
            "SIGTERM or Ctrl-C. Runs in UTC."
        ),
    )
    parser.add_argument(
        "--data-dir", required=True, help="chDB data directory (created if missing)"
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="IPv4 loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="queries that run at once"
    )
    parser.add_argument(
        "--ready-file", default=None, help="where to write the JSON state (default: beside DIR)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started this one exits",
    )
    args = parser.parse_args(argv)

    # chDB reads the time zone when it loads, and clients expect a server in UTC.
    os.environ["TZ"] = "UTC"
    time.tzset()
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    try:
        serve(
            args.data_dir,
            host=args.host,
            port=args.port,
            ready_file=args.ready_file,
            workers=args.workers,
            on_ready=lambda url: print(url, flush=True),
            exit_with_parent=args.exit_with_parent,
        )
    except EndpointError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
