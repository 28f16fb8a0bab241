"""`ServeConfig`: how `edgeqa serve` listens, batches and protects itself."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgeqa.documents.answers import RETRIEVAL_WEIGHT, check_retrieval_weight
from edgeqa.documents.query import DEFAULT_K, check_k
from edgeqa.errors import ConfigError, InputError
from edgeqa.prompt import MAX_BEAMS
from edgeqa.runtime.inputs import MAX_THREADS

#: A host name or address as a Host header gives it, without the port: IPv6 in brackets, or '*' for any.
_HOST_NAME = re.compile(r"\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one server, validated once.

    Attributes:
        artifact: The artifact folder to serve.
        host: Address to bind (0.0.0.0: every interface).
        port: TCP port (0: any free one).
        threads: onnxruntime threads per graph (default: physical cores).
        max_batch_size: Most requests decoded together.
        max_beams: Most beams a request may ask for (a beam request is decoded alone, so a batch
            never holds more than max(max_batch_size, max_beams) rows).
        max_new_tokens: Most answer tokens a request may ask for (default: the artifact's limit).
        batch_wait_ms: Longest wait for more requests to batch once one is queued (none for a
            lone caller: one request queued after a batch of one).
        max_queue: Most waiting requests; more are refused with 503 and Retry-After.
        api_key: Key asked of every endpoint but /health and the page (also from --api-key-file or
            EDGEQA_API_KEY); spaces around it are dropped, as from a key file and
            the request's header.
        cors_origins: Origins allowed by CORS, comma-separated (default: CORS off).
        allowed_hosts: More host names requests may call this server by (comma-separated; '*': any), beside
            localhost and the loopback addresses, the only ones answered by default when it listens on
            loopback: a request naming another gets 400, so no web page can reach it by rebinding its own
            name to 127.0.0.1. Listening beyond loopback, any name is answered unless some are given.
        ui: Serve the web page at /.
        max_body_bytes: Largest request body (413 above it).
        shutdown_timeout: Seconds SIGTERM waits for in-flight requests (those still open then get 503).
        keepalive_s: Seconds between `: ping` comments on a quiet stream.
        verify: Check the artifact's checksums on load.
        index: Answer from the passages of this index (`edgeqa index`) unless a request brings its own context.
        k: Passages read per question from the index.
        retrieval_weight: How much a passage's retrieval log-probability counts beside the reader's
            score when choosing among the passages read (0: the reader's score alone).
    """

    artifact: Path
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int | None = None
    max_batch_size: int = 8
    max_beams: int = 4
    max_new_tokens: int | None = None
    batch_wait_ms: float = 5.0
    max_queue: int = 64
    api_key: str | None = field(default=None, repr=False)  # a secret: never shown
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # lower case, no trailing dot, as a Host header is compared
    ui: bool = True
    max_body_bytes: int = 1 << 20
    shutdown_timeout: float = 30.0
    keepalive_s: float = 10.0
    verify: bool = True
    index: Path | None = None
    k: int = DEFAULT_K
    retrieval_weight: float = RETRIEVAL_WEIGHT

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_hosts", tuple(map(fold_host, self.allowed_hosts)))
        if self.api_key is not None:  # a header's key is stripped: spaces kept here could never match
            object.__setattr__(self, "api_key", self.api_key.strip())
        checks = [
            ("port", 0 <= self.port <= 65535, "must be between 0 and 65535"),
            ("threads", self.threads is None or 1 <= self.threads <= MAX_THREADS, f"must be 1 to {MAX_THREADS}"),
            ("max_batch_size", self.max_batch_size >= 1, "must be at least 1"),
            ("max_beams", 1 <= self.max_beams <= MAX_BEAMS, f"must be between 1 and {MAX_BEAMS}"),
            ("max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1, "must be at least 1"),
            ("batch_wait_ms", self.batch_wait_ms >= 0, "must be 0 or more"),
            ("max_queue", self.max_queue >= 1, "must be at least 1"),
            ("max_body_bytes", self.max_body_bytes >= 1024, "must be at least 1024"),
            ("shutdown_timeout", self.shutdown_timeout >= 0, "must be 0 or more"),
            ("keepalive_s", self.keepalive_s > 0, "must be greater than 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{name} {rule}, got {getattr(self, name)} ({_flag(name)})")
        odd = [h for h in self.allowed_hosts if not _HOST_NAME.fullmatch(h)]
        if odd:
            raise ConfigError(
                f"allowed_hosts takes host names such as office-box.lan or 10.0.0.5 (IPv6 in brackets), without "
                f"scheme or port, got {odd[0]!r} (--allowed-hosts)"
            )
        if self.api_key == "":
            raise ConfigError("api_key must not be empty (--api-key, --api-key-file or EDGEQA_API_KEY)")
        if self.index is not None and self.k > self.max_queue:
            raise ConfigError(
                f"k must be at most max_queue (a question queues k), got k={self.k} and max_queue={self.max_queue} "
                "(-k, --max-queue)"
            )
        try:  # the index's own rules, as `edgeqa ask --index` applies them
            check_k(self.k), check_retrieval_weight(self.retrieval_weight)
        except InputError as e:
            raise ConfigError(str(e)) from None

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")

    @property
    def host_names(self) -> tuple[str, ...] | None:
        """The names a request's Host header may give (lower case, IPv6 in brackets); None: any."""
        if "*" in self.allowed_hosts or not (self.loopback or self.allowed_hosts):
            return None
        own = fold_host(f"[{self.host}]" if ":" in self.host else self.host)
        return tuple(dict.fromkeys(("localhost", "127.0.0.1", "[::1]", own, *self.allowed_hosts)))


def fold_host(name: str) -> str:
    """A host name as Host headers are compared: lower case, without a trailing dot."""
    return name.lower().rstrip(".")


def _flag(name: str) -> str:
    """The `edgeqa serve` option that sets a field (`fields_as_options` names them so)."""
    return "--" + name.replace("_", "-")


def resolve_api_key(given: str | None, key_file: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The server's key: `given`, else the content of `key_file`, else EDGEQA_API_KEY, else None (no key).

    A blank key from any source (an unset variable in EDGEQA_API_KEY=$KEY) is refused by `ServeConfig`,
    which strips every key, not taken for no key.

    Raises:
        ConfigError: both `given` and `key_file`, or a key file that cannot be read.
    """
    if given is not None and key_file is not None:
        raise ConfigError("give --api-key or --api-key-file, not both")
    if key_file is None:
        return given if given is not None else environ.get("EDGEQA_API_KEY")
    try:
        return key_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the API key file {key_file}: {e}") from e
