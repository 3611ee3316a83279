"""Debian's Orthanc as a real PACS peer of the tests: started on loopback with a temporary
configuration and storage, queried through its REST API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from support import free_port


class Orthanc:
    """Debian's Orthanc on loopback with a temporary configuration and storage; it keeps
    its ports and storage across `stop()` / `start()`, like a PACS that is restarted."""

    ae_title = "ORTHANC"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "lods-test-pacs",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "SaveJobs": False,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 4,
        }
        (folder / "orthanc.json").write_text(json.dumps(config, indent=2))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60.0) -> None:
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        if not Path(binary).exists():
            pytest.fail("Orthanc is not installed; run `make system-deps`")
        with (self.folder / "orthanc.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, str(self.folder / "orthanc.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.folder / "orthanc.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Orthanc did not start:\n{tail}")
            try:
                self.get("/system")
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)

    def kill(self) -> None:
        """Stop at once (kill -9), like a PACS that crashed or lost power."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop; a graceful Orthanc shutdown takes seconds, so it is not waited for long."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.kill()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def find(self, sop_instance_uid: str) -> list[dict[str, Any]]:
        """Return what Orthanc holds with this SOP Instance UID (expanded instance records)."""
        found: list[dict[str, Any]] = self.post(
            "/tools/find",
            {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}, "Expand": True},
        )
        return found

    def tags(self, orthanc_id: str) -> dict[str, Any]:
        tags: dict[str, Any] = self.get(f"/instances/{orthanc_id}/simplified-tags")
        return tags

    def instances_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance Orthanc holds of a study, with its main tags."""
        found: list[dict[str, Any]] = self.post(
            "/tools/find",
            {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
        )
        return found
