"""Start and stop the HL7 intake as the node does: MLLP listener plus optional watched folder."""

from __future__ import annotations

from hipfuse.config.clinical_text import HL7Settings
from hipfuse.integrations.hl7.folder import HL7FolderWatcher
from hipfuse.integrations.hl7.intake import HL7Intake
from hipfuse.integrations.hl7.mllp import MLLPListenerThread
from hipfuse.integrations.hl7.store import HL7Store


class HL7Service:
    """The HL7 intake of one node: listener thread and, with ``watch_dir`` set, folder watcher.

    Parameters
    ----------
    settings
        The ``[hl7]`` settings.
    store
        Where messages are stored; the caller opens and closes it, and passes
        the same store to :func:`~hipfuse.integrations.text_assembly.gather_clinical_text`.
    port
        Overrides ``settings.port``; 0 picks a free port (tests).
    """

    def __init__(self, settings: HL7Settings, store: HL7Store, port: int | None = None) -> None:
        self.settings = settings
        self.store = store
        self.intake = HL7Intake(store, settings)
        self.listener = MLLPListenerThread(settings, self.intake, port)
        self.watcher: HL7FolderWatcher | None = None
        if settings.watch_dir is not None:
            self.watcher = HL7FolderWatcher(
                settings.watch_dir, self.intake, stable_s=settings.watch_stable_s
            )

    @property
    def port(self) -> int:
        """The TCP port the MLLP listener listens on."""
        return self.listener.port

    def start(self) -> None:
        """Start the listener, then the folder watcher.

        Raises
        ------
        OSError
            The listener address cannot be bound, or the watched folder cannot
            be created. Nothing is left running then.
        """
        self.listener.start()
        if self.watcher is not None:
            try:
                self.watcher.start()
            except OSError:
                self.listener.stop()
                raise

    def stop(self) -> None:
        """Stop the folder watcher and the listener; messages in progress are finished first."""
        if self.watcher is not None:
            self.watcher.stop()
        self.listener.stop()
