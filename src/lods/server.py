"""`lods serve`: the HTTP app, the DICOM SCP and the stable-study watcher in one process."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from lods.app import create_app
from lods.config import Settings
from lods.imaging.scp import DicomServer
from lods.imaging.stable import StableStudyWatcher
from lods.runtime import Runtime

log = logging.getLogger(__name__)


@contextmanager
def background_services(runtime: Runtime) -> Iterator[DicomServer]:
    """Run the DICOM node and the stable-study watcher for the duration of the block."""
    dicom = DicomServer(runtime)
    watcher = StableStudyWatcher(runtime)
    dicom.start()
    watcher.start()
    try:
        yield dicom
    finally:
        watcher.stop()
        dicom.stop()


def run_server(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn handles the signals and returns."""
    runtime = Runtime.open(settings)
    app = create_app(runtime)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level="info",
        access_log=False,
        proxy_headers=False,
    )
    try:
        with background_services(runtime):
            log.info(
                "Lods is serving http://%s:%d/ and DICOM %s@%s:%d",
                settings.host,
                settings.http_port,
                settings.dicom_ae_title,
                settings.host,
                settings.dicom_port,
            )
            uvicorn.Server(config).run()
    finally:
        runtime.close()
