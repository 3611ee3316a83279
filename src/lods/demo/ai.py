"""The demo's AI: the reference solutions installed, approved and deployed live, and a
vendor appliance (`lods-vendor-sim`) running the screening model behind DICOM.

The reference packages live in `reference_solutions/` beside the code (outside the
platform, installed exactly as a vendor's package would be). The appliance route gets a
package of its own, written into the data dir at demo time because it names the
appliance's address.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lods.auth.service import get_user
from lods.config import Settings
from lods.demo.region import ACTOR, HOSPITALS
from lods.demo.sender import wait_for_port
from lods.runtime import Runtime
from lods.sites.service import get_site_by_code
from lods.solutions import service
from lods.solutions.manifest import MANIFEST_NAME, parse_manifest
from lods.solutions.packaging import build_package

log = logging.getLogger(__name__)

#: Where the reference packages are (a source checkout); LODS_REFERENCE_SOLUTIONS overrides.
REFERENCE_DIR = Path(__file__).resolve().parents[3] / "reference_solutions"
APPLIANCE_AE = "DEMO_MG_AI"
APPLIANCE_ID = "org.lods.demo.screening-appliance"
EVIDENCE = (
    "Demonstration only: performance measured on held-out synthetic cases (see the model "
    "card in reference_solutions/); not a medical device"
)


@dataclass(frozen=True)
class DemoSolution:
    folder: str
    #: Hospitals (site codes) where it runs live.
    sites: tuple[str, ...]


#: The screening model runs in-process at two hospitals and through the appliance at the third.
SOLUTIONS = (
    DemoSolution("fracture", tuple(h.code for h in HOSPITALS)),
    DemoSolution("screening", ("HAVNBY", "SKOVLUND")),
    # Patient monitoring: the NEWS2 rule engine and the falls policy on every ward.
    DemoSolution("news2", tuple(h.code for h in HOSPITALS)),
    DemoSolution("falls", tuple(h.code for h in HOSPITALS)),
)
APPLIANCE_SITES = ("AABAKKE",)


def reference_dir() -> Path:
    return Path(os.environ.get("LODS_REFERENCE_SOLUTIONS", REFERENCE_DIR))


def _package(name: str) -> Path:
    return reference_dir() / name / "package"


def _install_approve_deploy(runtime: Runtime, package: Path, sites: tuple[str, ...]) -> str:
    manifest = parse_manifest((package / MANIFEST_NAME).read_text(encoding="utf-8"))
    ref = f"{manifest.id}@{manifest.version}"
    with runtime.sessions() as db:
        try:
            version_id: int | None = service.find_version(db, ref=ref).id
        except service.SolutionNotFound:
            version_id = None
    if version_id is None:
        version_id = service.install_package(runtime, path=package, actor=ACTOR)
    with runtime.sessions() as db, db.begin():
        version = service.get_version(db, version_id=version_id)
        if version.state == "installed":
            approver = get_user(db, username="ai_owner")
            assert approver is not None, "the demo accounts are created first"
            service.approve(
                db,
                settings=runtime.settings,
                version_id=version.id,
                approver=approver,
                evidence=EVIDENCE,
            )
        for code in sites:
            site = get_site_by_code(db, code=code)
            if site is None:
                continue
            deployed = {d.site_fk: d for d in version.deployments}
            current = deployed.get(site.id)
            if current is None or current.state != "active" or current.mode != "live":
                service.deploy(db, version_id=version.id, site_id=site.id, mode="live", actor=ACTOR)
    return f"{manifest.label} live at {', '.join(sites)}"


def appliance_package(settings: Settings, *, port: int) -> Path:
    """A `dicom_node` package for the demo appliance, describing the screening model."""
    screening = parse_manifest((_package("screening") / MANIFEST_NAME).read_text(encoding="utf-8"))
    data = screening.model_dump(mode="json", exclude_none=True)
    data.update(
        id=APPLIANCE_ID,
        name=f"{screening.name} (appliance)",
        vendor="Lods Vendor Simulator",
        version=f"{screening.version}-{port}",
        runtime={
            "kind": "dicom_node",
            "host": "127.0.0.1",
            "port": port,
            "ae_title": APPLIANCE_AE,
            "answer_timeout_seconds": 60,
        },
    )
    data.pop("files", None)
    folder = settings.data_dir / "demo-appliance" / str(port)
    notes = b"The demo's stand-in for a vendor's AI appliance: lods-vendor-sim.\n"
    return build_package(folder, data, {"README.txt": notes})


def install_demo_ai(runtime: Runtime, *, appliance_port: int | None) -> list[str]:
    """Install, approve and deploy what there is; return a line per solution for the user."""
    lines: list[str] = []
    for solution in SOLUTIONS:
        package = _package(solution.folder)
        if not (package / MANIFEST_NAME).exists():
            lines.append(f"{solution.folder}: no package at {package} (skipped)")
            continue
        lines.append(_install_approve_deploy(runtime, package, solution.sites))
    if appliance_port is not None and (_package("screening") / MANIFEST_NAME).exists():
        package = appliance_package(runtime.settings, port=appliance_port)
        lines.append(_install_approve_deploy(runtime, package, APPLIANCE_SITES) + " (via DICOM)")
    return lines


@contextmanager
def vendor_appliance(settings: Settings, *, port: int) -> Iterator[subprocess.Popen[bytes] | None]:
    """Run `lods-vendor-sim` with the screening package for the duration of the block."""
    package = _package("screening")
    if not (package / MANIFEST_NAME).exists():
        yield None
        return
    log_path = settings.data_dir / "vendor-appliance.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lods.vendor_sim.cli",
                "--ae-title",
                APPLIANCE_AE,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--return",
                f"127.0.0.1:{settings.dicom_port}",
                "--return-ae",
                settings.dicom_ae_title,
                "--package",
                str(package),
                "--quiet-seconds",
                "1",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_for_port("127.0.0.1", port, timeout=30)
            started = True
        except OSError:
            log.error("the demo's AI appliance did not start; see %s", log_path)
            started = False
        yield proc if started else None
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
