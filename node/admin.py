"""Admin subcommands of ``hipfuse-node``: ``resend``, ``retry-failed`` and ``audit export``.

Each opens the job store of the node named by ``--config`` beside a node
that may be running in another process (SQLite in WAL mode lets both write),
changes it in one transaction and prints what it did. Nothing here imports
the model stack.

Exit statuses: 0 done (also when there was nothing to do), 1 no job store in
``storage.data_dir``, 2 invalid settings or arguments, an unknown study, a
study without results or an unknown destination.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from hipfuse.config.settings import Settings
    from hipfuse.node.jobstore import JobStore
    from hipfuse.node.jobstore_admin import RequeuedSend

EXIT_OK = 0
EXIT_NO_JOB_STORE = 1
EXIT_USAGE = 2

ADMIN_COMMANDS = ("resend", "retry-failed", "audit")


def add_admin_commands(commands: Any) -> None:
    """Add ``resend``, ``retry-failed`` and ``audit`` to the ``hipfuse-node`` subparsers."""
    resend = commands.add_parser(
        "resend",
        help="queue a study's results for sending again",
        description=(
            "Queue the SR and Secondary Captures already made for a study for sending "
            "again, to one destination or to every configured one, with attempts reset. "
            "The same files are sent, so their SOP Instance UIDs stay the same and PACS "
            "gets the same objects again, not a second SR. Works while the node runs: "
            "its senders pick the items up at their next round. Exit status 2 for an "
            "unknown study or one without results."
        ),
    )
    resend.add_argument("study_instance_uid", metavar="STUDY_UID", help="Study Instance UID")
    resend.add_argument(
        "--destination",
        metavar="NAME",
        help="name of one [[destinations]] entry (default: every configured destination)",
    )
    resend.add_argument("--config", type=Path, required=True, help="settings file (TOML)")

    retry = commands.add_parser(
        "retry-failed",
        help="queue failed sends and failed analyses again",
        description=(
            "Put every result whose sending failed after its last attempt back in the "
            "queue with attempts reset, and every study whose analysis failed back to be "
            "analysed again. With --destination only that destination's failed sends are "
            "queued, and no analysis. Prints what was queued."
        ),
    )
    retry.add_argument("--config", type=Path, required=True, help="settings file (TOML)")
    retry.add_argument(
        "--destination",
        metavar="NAME",
        help="retry only the failed sends to this [[destinations]] entry",
    )

    audit = commands.add_parser(
        "audit",
        help="export the audit trail",
        description="Work with the audit trail kept in the job store.",
    )
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    export = audit_commands.add_parser(
        "export",
        help="write audit events as CSV or JSON Lines",
        description=(
            "Write the audit events (time in UTC ISO 8601, event type, calling and called "
            "AE titles, peer address, Study/Series/SOP Instance UIDs, destination, job id, "
            "detail) in the order they happened. In CSV, lists of UIDs are separated by "
            "spaces and detail is a JSON object. No patient attributes are stored, so "
            "none are written."
        ),
    )
    export.add_argument("--config", type=Path, required=True, help="settings file (TOML)")
    export.add_argument(
        "--since",
        metavar="ISO",
        help="first time included, ISO 8601 (2026-03-01 or 2026-03-01T08:00:00Z); "
        "UTC when no offset is given (default: the first event)",
    )
    export.add_argument(
        "--until",
        metavar="ISO",
        help="time excluded from here on, ISO 8601, UTC when no offset is given (default: no end)",
    )
    export.add_argument(
        "--format",
        choices=["csv", "jsonl"],
        default="csv",
        help="csv (a header row, then one row per event) or jsonl (one JSON object per "
        "line) (default csv)",
    )
    export.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="file to write, created with owner-only permissions (default: stdout)",
    )


def run_admin_command(args: argparse.Namespace) -> int:
    """Run the admin subcommand parsed into ``args``; return the exit status."""
    if args.command == "resend":
        return resend(args.config, args.study_instance_uid, args.destination)
    if args.command == "retry-failed":
        return retry_failed(args.config, args.destination)
    return export_audit(
        args.config, since=args.since, until=args.until, fmt=args.format, out=args.out
    )


# --------------------------------------------------------------------------- #
# Commands
# --------------------------------------------------------------------------- #


def resend(config: Path, study_uid: str, destination: str | None) -> int:
    """Queue a study's existing results for ``destination`` or every destination."""
    from hipfuse.node.jobstore import StudyNotFoundError
    from hipfuse.node.jobstore_admin import NoResultsError

    with ExitStack() as stack:
        opened = _open(config, stack)
        if isinstance(opened, int):
            return opened
        settings, jobstore = opened
        names = _destination_names(settings, config, destination)
        if names is None:
            return EXIT_USAGE
        try:
            outcome = jobstore.requeue_results(study_uid, names, requested_by=_user())
        except (StudyNotFoundError, NoResultsError) as error:
            print(f"hipfuse-node resend: {error}", file=sys.stderr)
            return EXIT_USAGE

    for send in outcome.requeued:
        print(f"queued {send.sop_instance_uid} -> {send.destination} ({_was(send)})")
    for sop_uid, name in outcome.in_progress:
        print(f"left {sop_uid} -> {name}: the node is sending it now")
    print(
        f"study {study_uid}: {len(outcome.requeued)} item(s) queued for "
        f"{', '.join(names)}; study state {outcome.study_state.value}. A running node "
        "sends them at its next sender round, a stopped one after it starts."
    )
    return EXIT_OK


def retry_failed(config: Path, destination: str | None) -> int:
    """Queue failed sends (of ``destination`` if given) and, without it, failed analyses."""
    from hipfuse.node.states import JobState

    with ExitStack() as stack:
        opened = _open(config, stack)
        if isinstance(opened, int):
            return opened
        settings, jobstore = opened
        names = _destination_names(settings, config, destination, allow_none=True)
        if names is None:
            return EXIT_USAGE
        unconfigured: dict[str, int] = {}
        if destination is None:
            for item in jobstore.list_outbox(states=[JobState.FAILED], limit=1_000_000):
                if item.destination not in names:
                    unconfigured[item.destination] = unconfigured.get(item.destination, 0) + 1
        outcome = jobstore.requeue_failed(names, analyses=destination is None, requested_by=_user())

    for send in outcome.sends:
        print(
            f"queued send {send.sop_instance_uid} of study {send.study_instance_uid} -> "
            f"{send.destination} ({_was(send)})"
        )
    for analysis in outcome.analyses:
        print(
            f"queued analysis of study {analysis.study_instance_uid} "
            f"(failed: {analysis.previous_reason})"
        )
    for name, count in sorted(unconfigured.items()):
        print(
            f"left {count} failed item(s) for destination {name}: it is not in {config}; "
            "add it back to [[destinations]] to send them"
        )
    if not outcome.sends and not outcome.analyses:
        print("nothing failed to retry")
    else:
        print(f"queued {len(outcome.sends)} send(s) and {len(outcome.analyses)} analysis(es)")
    return EXIT_OK


def export_audit(
    config: Path, *, since: str | None, until: str | None, fmt: str, out: Path | None
) -> int:
    """Write the audit events between ``since`` and ``until`` to ``out`` or stdout."""
    from hipfuse.node.audit import WRITERS, ExportFormat, parse_iso_time

    try:
        since_s = parse_iso_time(since, "--since") if since else None
        until_s = parse_iso_time(until, "--until") if until else None
    except ValueError as error:
        print(f"hipfuse-node audit export: {error}", file=sys.stderr)
        return EXIT_USAGE
    if since_s is not None and until_s is not None and until_s <= since_s:
        print(
            f"hipfuse-node audit export: --until {until} is not after --since {since}",
            file=sys.stderr,
        )
        return EXIT_USAGE

    writer = WRITERS[ExportFormat(fmt)]
    with ExitStack() as stack:
        opened = _open(config, stack)
        if isinstance(opened, int):
            return opened
        _, jobstore = opened
        handle: TextIO = sys.stdout
        if out is not None:
            try:
                handle = stack.enter_context(_open_private(out))
            except OSError as error:
                print(
                    f"hipfuse-node audit export: cannot write {out}: {error.strerror}",
                    file=sys.stderr,
                )
                return EXIT_USAGE
        count = writer(jobstore.iter_audit(since=since_s, until=until_s), handle)
        handle.flush()
    print(f"wrote {count} audit event(s) to {out or 'stdout'}", file=sys.stderr)
    return EXIT_OK


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _open(config: Path, stack: ExitStack) -> tuple[Settings, JobStore] | int:
    """Load the settings and open the job store; print why and return a status on failure."""
    from hipfuse.config.settings import SettingsError, load_settings
    from hipfuse.node.jobstore import JOB_STORE_FILE_NAME, JobStore

    try:
        settings = load_settings(config)
    except SettingsError as error:
        print(str(error), file=sys.stderr)
        return EXIT_USAGE
    path = settings.storage.data_dir / JOB_STORE_FILE_NAME
    if not path.is_file():
        print(
            f"no job store at {path}: the node has not run with storage.data_dir "
            f"{settings.storage.data_dir}",
            file=sys.stderr,
        )
        return EXIT_NO_JOB_STORE
    return settings, stack.enter_context(JobStore(path))


def _destination_names(
    settings: Settings, config: Path, destination: str | None, *, allow_none: bool = False
) -> list[str] | None:
    """Return the destinations to act on; print why and return ``None`` when invalid."""
    configured = [entry.name for entry in settings.destinations]
    if destination is not None and destination not in configured:
        listed = ", ".join(configured) if configured else "none"
        print(
            f"destination {destination!r} is not configured in {config} "
            f"(configured: {listed}); use the name of a [[destinations]] entry",
            file=sys.stderr,
        )
        return None
    if destination is not None:
        return [destination]
    if not configured and not allow_none:
        print(
            f"no [[destinations]] entry in {config}: there is nowhere to send the results",
            file=sys.stderr,
        )
        return None
    return configured


# Wording of each send job state in "was ... after N attempts".
_STATE_WORDS = {"succeeded": "sent", "failed": "failed", "pending": "queued", "running": "sending"}


def _was(send: RequeuedSend) -> str:
    if send.previous_state is None:
        return "new for this destination"
    attempts = send.previous_attempts
    state = _STATE_WORDS.get(send.previous_state.value, send.previous_state.value)
    text = f"was {state} after {attempts} attempt{'' if attempts == 1 else 's'}"
    return f"{text}: {send.previous_error}" if send.previous_error else text


def _user() -> str:
    """Return the name of the user running the command, for the audit trail."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER in a container
        return f"uid {os.getuid()}"


def _open_private(path: Path) -> TextIO:
    """Open ``path`` for writing text, created with mode 0600 and truncated."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(descriptor, "w", encoding="utf-8", newline="")
