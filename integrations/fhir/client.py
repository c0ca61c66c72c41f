"""HTTP client for a FHIR R4 server: bearer token, TLS verification, retries, paging.

Every request goes to ``[fhir] base_url`` or below it: a ``next`` link or an
attachment URL that points elsewhere is not followed, so the bearer token
never leaves the configured server. Redirects are not followed for the same
reason. TLS certificates are always verified, against ``ca_file`` when set
and the system's trusted certificates otherwise.
"""

from __future__ import annotations

import email.utils
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import structlog

from hipfuse.config.clinical_text import FHIRSettings

log = structlog.get_logger(__name__)

FHIR_JSON = "application/fhir+json"
# Statuses worth another try: rate limiting and server-side failures.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

QueryParams = Sequence[tuple[str, str]]


class FHIRError(Exception):
    """A FHIR request that failed for good; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FHIRPageLimitError(FHIRError):
    """A search with more pages than ``max_pages``; the entries read so far were used."""


@dataclass(frozen=True)
class SearchEntry:
    """One resource of a search result and its ``search.mode`` (``match`` or ``include``)."""

    resource: dict[str, Any]
    mode: str


class FHIRClient:
    """Synchronous FHIR R4 client over ``httpx``.

    Parameters
    ----------
    settings
        The ``[fhir]`` settings.
    transport
        Replaces the network transport (tests).
    sleep
        Waits between retries; tests pass a recorder.
    """

    def __init__(
        self,
        settings: FHIRSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not settings.base_url:
            raise FHIRError("[fhir] base_url is empty; set the URL of the FHIR R4 base")
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/") + "/"
        self._sleep = sleep
        verify: ssl.SSLContext
        if settings.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(settings.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise FHIRError(
                    f"[fhir] ca_file {settings.ca_file} cannot be loaded ({exc}); "
                    "give a PEM file of CA certificates"
                ) from None
        else:
            verify = ssl.create_default_context()
        self._http = httpx.Client(
            timeout=settings.timeout_s,
            verify=verify,
            follow_redirects=False,
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> FHIRClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- URLs and headers --------------------------------------------------- #

    def resolve(self, url: str) -> str:
        """Turn a reference or link into an absolute URL under ``base_url``.

        Raises
        ------
        FHIRError
            The URL points outside ``base_url``.
        """
        absolute = urljoin(self.base_url, url)
        target, base = urlsplit(absolute), urlsplit(self.base_url)
        same_origin = (target.scheme, target.netloc) == (base.scheme, base.netloc)
        if not same_origin or not (target.path + "/").startswith(base.path):
            raise FHIRError(
                f"URL {_without_query(absolute)} lies outside [fhir] base_url "
                f"{self.base_url}; the client does not send its token there"
            )
        return absolute

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if self.settings.token_file is not None:
            try:
                token = self.settings.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise FHIRError(
                    f"[fhir] token_file {self.settings.token_file} cannot be read "
                    f"({exc.strerror}); check the path and its permissions"
                ) from None
            if not token:
                raise FHIRError(f"[fhir] token_file {self.settings.token_file} is empty")
            headers["Authorization"] = f"Bearer {token}"
        return headers

    # -- requests ----------------------------------------------------------- #

    def get(self, url: str, params: QueryParams = (), accept: str = FHIR_JSON) -> httpx.Response:
        """GET a URL under ``base_url`` with retries; return a 2xx response.

        Raises
        ------
        FHIRError
            The URL is outside ``base_url``, the token file cannot be read,
            the server returned a status that is not retried, or every
            attempt failed.
        """
        absolute = self.resolve(url)
        headers = self._headers(accept)
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                # An empty params list would replace the query of a next link.
                response = self._http.get(absolute, params=list(params) or None, headers=headers)
            except (httpx.DecodingError, httpx.TooManyRedirects, httpx.InvalidURL) as exc:
                raise FHIRError(
                    f"GET {_without_query(absolute)} failed: {type(exc).__name__}: {exc}"
                ) from None
            except httpx.TransportError as exc:
                if attempt == attempts:
                    raise FHIRError(
                        f"GET {_without_query(absolute)} failed after {attempts} attempts: "
                        f"{type(exc).__name__}: {exc}"
                    ) from None
                delay = self._backoff(attempt, None)
                log.warning(
                    "fhir_request_retry",
                    url=_without_query(absolute),
                    attempt=attempt,
                    error=type(exc).__name__,
                    delay_s=delay,
                )
                self._sleep(delay)
                continue
            if response.is_success:
                return response
            if response.status_code in RETRY_STATUSES and attempt < attempts:
                delay = self._backoff(attempt, response.headers.get("Retry-After"))
                log.warning(
                    "fhir_request_retry",
                    url=_without_query(absolute),
                    attempt=attempt,
                    status=response.status_code,
                    delay_s=delay,
                )
                self._sleep(delay)
                continue
            raise _status_error(response, absolute, attempt)
        raise AssertionError("unreachable: the loop returns or raises")

    def get_json(self, url: str, params: QueryParams = ()) -> dict[str, Any]:
        """GET a FHIR resource as JSON.

        Raises
        ------
        FHIRError
            As :meth:`get`, or the body is not a JSON object.
        """
        response = self.get(url, params)
        try:
            body = response.json()
        except ValueError:
            raise FHIRError(f"{_without_query(str(response.url))} did not return JSON") from None
        if not isinstance(body, dict):
            raise FHIRError(
                f"{_without_query(str(response.url))} returned JSON that is not an object"
            )
        return body

    def search(self, resource_type: str, params: QueryParams) -> Iterator[SearchEntry]:
        """Search and follow the Bundle's ``next`` links, up to ``max_pages`` pages.

        Yields
        ------
        SearchEntry
            Every entry with a resource, matches and includes alike.

        Raises
        ------
        FHIRPageLimitError
            More pages remain after ``max_pages``; the entries read so far
            were yielded.
        FHIRError
            A page failed.
        """
        url = resource_type
        query: QueryParams = [*params, ("_count", str(self.settings.page_size))]
        for page in range(1, self.settings.max_pages + 1):
            bundle = self.get_json(url, query)
            if bundle.get("resourceType") != "Bundle":
                raise FHIRError(f"search of {resource_type} returned no Bundle")
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict):
                    mode = (entry.get("search") or {}).get("mode") or "match"
                    yield SearchEntry(resource, mode)
            next_url = _link(bundle, "next")
            if not next_url:
                return
            url, query = next_url, ()
            log.debug("fhir_search_next_page", resource_type=resource_type, page=page + 1)
        raise FHIRPageLimitError(
            f"search of {resource_type} has more than {self.settings.max_pages} pages; "
            "raise [fhir] max_pages or page_size",
        )

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        delay = self.settings.backoff_initial_s * 2 ** (attempt - 1)
        server_delay = _retry_after_s(retry_after)
        if server_delay is not None:
            delay = server_delay
        return min(max(delay, 0.0), self.settings.backoff_max_s)


def _link(bundle: dict[str, Any], relation: str) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == relation and link.get("url"):
            return str(link["url"])
    return None


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delay-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - datetime.now(UTC)).total_seconds()


def _without_query(url: str) -> str:
    # Search parameters carry patient identifiers; they stay out of messages and logs.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _status_error(response: httpx.Response, url: str, attempts: int) -> FHIRError:
    status = response.status_code
    where = f"GET {_without_query(url)}"
    if status in (401, 403):
        return FHIRError(
            f"{where} was rejected with HTTP {status}; check the token in [fhir] token_file",
            status,
        )
    if status in RETRY_STATUSES:
        return FHIRError(f"{where} still returned HTTP {status} after {attempts} attempts", status)
    return FHIRError(f"{where} failed with HTTP {status}{_issue_codes(response)}", status)


def _issue_codes(response: httpx.Response) -> str:
    # Issue codes only: diagnostics text may echo search values (patient IDs).
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    codes = [str(issue.get("code")) for issue in body.get("issue") or [] if isinstance(issue, dict)]
    return f" (OperationOutcome issue codes: {', '.join(codes)})" if codes else ""
