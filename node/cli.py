"""``hipfuse-node``: run the DICOM node, check its settings, show its state, run the demo.

The admin commands ``resend``, ``retry-failed`` and ``audit export`` live in
:mod:`hipfuse.node.admin`.

Only the settings schema is imported before a command runs, so ``--help``,
``check-config`` and ``status`` start at once. The model stack (torch) loads
only for ``run`` and ``demo``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from hipfuse.node.admin import ADMIN_COMMANDS, add_admin_commands, run_admin_command

if TYPE_CHECKING:
    from hipfuse.config.settings import Settings

EXIT_OK = 0
EXIT_INVALID_SETTINGS = 2
EXIT_START_FAILED = 3
EXIT_STOPPED_UNEXPECTEDLY = 4


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subcommand per task."""
    parser = argparse.ArgumentParser(
        prog="hipfuse-node",
        description=(
            "DICOM node that receives hip radiographs and CT from PACS, classifies each "
            "hip and sends back a Structured Report and Grad-CAM Secondary Captures."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the node until SIGTERM or SIGINT",
        description=(
            "Start the storage SCP, study assembly, analysis and sending. SIGTERM or "
            "SIGINT stops accepting associations, finishes the study being analysed "
            "and leaves queued work for the next start. SIGHUP reads the settings file "
            "again: the keys that can change live take effect, and every other changed "
            "key is logged as setting_needs_restart."
        ),
    )
    run.add_argument("--config", type=Path, required=True, help="settings file (TOML)")
    run.add_argument(
        "--bundle",
        type=Path,
        help="model bundle folder; overrides [model] bundle_dir (default: that, else bundles/demo)",
    )

    check = commands.add_parser(
        "check-config",
        help="validate a settings file and list every problem",
        description=(
            "Validate a settings file with the HIPFUSE_* environment applied, and check "
            "that the DICOM TLS certificate, key and CA files exist, can be read by this "
            "user, match and are valid today. Prints each problem with its dotted key "
            "path and the reason; exit status 2 when there is any."
        ),
    )
    check.add_argument("config", type=Path, help="settings file (TOML)")

    status = commands.add_parser(
        "status",
        help="show queued studies, the outbox per destination and recent failures",
        description="Read the job store of a node (running or not) and print its state.",
    )
    status.add_argument("--config", type=Path, required=True, help="settings file (TOML)")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.add_argument(
        "--recent",
        type=int,
        default=10,
        help="failed studies, and unsent items per destination, to list (default 10)",
    )

    demo = commands.add_parser(
        "demo",
        help="send the sample study through a node on 127.0.0.1 and print the SR",
        description=(
            "Start a node on 127.0.0.1 with the demo bundle, its HL7 listener and a "
            "receiving SCP in a separate process. Deliver the sample osteoarthritis note "
            "over MLLP as an ORU^R01 from a separate process, send the sample pelvis "
            "radiograph and CT (converted to a DICOM series) with a separate sender "
            "process, and print the findings of the SR that comes back, whether clinical "
            "text was used, and the paths of the Grad-CAM overlays."
        ),
    )
    demo.add_argument(
        "--bundle",
        type=Path,
        default=Path("bundles/demo"),
        help="model bundle folder (default bundles/demo)",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        help="folder for the node's data, the inputs and the received results; kept "
        "afterwards (default: a temporary folder, deleted at the end)",
    )
    demo.add_argument(
        "--timeout-s",
        type=float,
        default=600.0,
        help="seconds to wait for the SR after sending (default 600)",
    )
    add_admin_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the process exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader of stdout went away (``audit export | head``): nothing
        # left to write to. stdout is pointed at /dev/null so that the
        # interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config)
    if args.command == "status":
        return show_status(args.config, as_json=args.json, recent=args.recent)
    if args.command == "run":
        return run_node(args.config, args.bundle)
    if args.command in ADMIN_COMMANDS:
        return run_admin_command(args)
    from hipfuse.node.demo import run_demo

    return run_demo(bundle_dir=args.bundle, workdir=args.workdir, timeout_s=args.timeout_s)


def _load(config: Path) -> tuple[Settings | None, list[str]]:
    from hipfuse.config.settings import SettingsError, load_settings

    try:
        return load_settings(config), []
    except SettingsError as error:
        return None, [f"invalid settings in {error.source}:"] + [
            f"  {path}: {reason}" for path, reason in error.problems
        ]


def check_config(config: Path) -> int:
    """Print every problem of a settings file; exit status 2 when there is one."""
    from hipfuse.node.service import bundle_problems, resolve_bundle_dir, runtime_problems

    settings, lines = _load(config)
    if settings is not None:
        problems = runtime_problems(settings) + bundle_problems(settings)
        if problems:
            lines = [f"settings in {config} that cannot be used on this host:"] + [
                f"  {path}: {reason}" for path, reason in problems
            ]
    if lines:
        print("\n".join(lines), file=sys.stderr)
        return EXIT_INVALID_SETTINGS
    node, hl7, dropfolder = settings.node, settings.hl7, settings.dropfolder
    hl7_state = f"on {hl7.bind_address}:{hl7.port}" if hl7.enabled else "off"
    print(
        f"{config}: valid; node {node.ae_title} on {node.bind_address}:{node.port}"
        f"{' with DICOM TLS' if node.tls.enabled else ''}, "
        f"{len(node.allowed_callers)} allowed caller(s), "
        f"{len(settings.destinations)} destination(s), data_dir {settings.storage.data_dir}, "
        f"bundle {resolve_bundle_dir(settings)}, HL7 {hl7_state}, "
        f"FHIR {'on' if settings.fhir.enabled else 'off'}, "
        f"drop folder {dropfolder.dir if dropfolder.enabled else 'off'}"
    )
    return EXIT_OK


def show_status(config: Path, *, as_json: bool, recent: int) -> int:
    """Print the state of the node whose settings are in ``config``."""
    from hipfuse.node.jobstore import JOB_STORE_FILE_NAME, JobStore
    from hipfuse.node.status import collect_status, format_status

    settings, lines = _load(config)
    if settings is None:
        print("\n".join(lines), file=sys.stderr)
        return EXIT_INVALID_SETTINGS
    path = settings.storage.data_dir / JOB_STORE_FILE_NAME
    if not path.is_file():
        print(
            f"no job store at {path}: the node has not run with storage.data_dir "
            f"{settings.storage.data_dir}",
            file=sys.stderr,
        )
        return 1
    with JobStore(path) as jobstore:
        status = collect_status(jobstore, settings, recent=recent)
    print(json.dumps(status, indent=2) if as_json else format_status(status))
    return EXIT_OK


def run_node(config: Path, bundle_dir: Path | None) -> int:
    """Run the node in the foreground until SIGTERM or SIGINT; reload the settings on SIGHUP."""
    settings, lines = _load(config)
    if settings is None:
        print("\n".join(lines), file=sys.stderr)
        return EXIT_INVALID_SETTINGS

    from hipfuse.config.logging import configure_logging
    from hipfuse.node.reload import SettingsReloader
    from hipfuse.node.service import NodeService, ServiceError
    from hipfuse.node.systemd_notify import SystemdNotifier

    configure_logging(settings.logging.level.value, settings.logging.json_lines)
    notifier = SystemdNotifier()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    service = NodeService(settings, bundle_dir=bundle_dir)
    reloader = SettingsReloader(service, config, notifier)
    # Installed before start(): SIGHUP would otherwise end the process. A
    # reload requested during start-up runs once the node is up.
    signal.signal(signal.SIGHUP, lambda *_: reloader.request())
    try:
        service.start()
    except ServiceError as error:
        print(f"hipfuse-node: cannot start: {error}", file=sys.stderr)
        return EXIT_START_FAILED
    # The SCP listens and the bundle is loaded once start() returns.
    node = settings.node
    listening = f"listening as {node.ae_title} on {node.bind_address}:{service.port}"
    notifier.ready(listening)
    reloader.base_status = listening
    reloader.start()
    check_interval_s = min(1.0, notifier.watchdog_interval_s or 1.0)
    try:
        service.wait(stop, check_interval_s, on_healthy=notifier.watchdog)
    except ServiceError as error:
        print(f"hipfuse-node: {error}", file=sys.stderr)
        return EXIT_STOPPED_UNEXPECTEDLY
    finally:
        reloader.stop()
        notifier.stopping()
        service.stop()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
