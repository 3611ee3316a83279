"""The demonstration region: three fictional hospitals, their DICOM nodes, one user per role.

The hospitals, AE titles and host names are invented (hosts under `.example`, which is
reserved for examples); the users get random passwords that are shown once. Run again
on the same database, the setup adds nothing twice and gives the users new passwords.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from lods.auth.models import Role
from lods.auth.service import create_user, generate_password, get_user, set_password
from lods.sites.service import (
    add_bed,
    add_department,
    add_dicom_node,
    create_site,
    get_site_by_code,
)

ACTOR = "demo"


@dataclass(frozen=True)
class Hospital:
    """A fictional hospital: its site code, its X-ray room's AE title and modality, its
    mammography unit's AE title, its PACS."""

    code: str
    name: str
    modality_ae: str
    modality: str
    pacs_ae: str
    mammo_ae: str

    @property
    def pacs_host(self) -> str:
        return f"pacs.{self.code.lower()}.example"


@dataclass(frozen=True)
class Account:
    """A demo login, with the password in clear: shown to the person running the demo."""

    username: str
    role: Role
    full_name: str
    password: str


HOSPITALS = (
    Hospital("HAVNBY", "Havnby Sygehus", "HAVNBY_DX1", "DX", "HAVNBY_PACS", "HAVNBY_MG1"),
    Hospital(
        "SKOVLUND", "Skovlund Hospital", "SKOVLUND_CR1", "CR", "SKOVLUND_PACS", "SKOVLUND_MG1"
    ),
    Hospital(
        "AABAKKE", "Åbakke Regionshospital", "AABAKKE_DX1", "DX", "AABAKKE_PACS", "AABAKKE_MG1"
    ),
)
#: Departments of every demo hospital: (code, name, kind).
DEPARTMENTS = (
    ("RAD", "Radiology", "radiology"),
    ("ED", "Emergency department", "emergency"),
    ("SCR", "Breast screening", "screening"),
    ("GER", "Geriatric ward", "ward"),
)
#: The monitored ward of every demo hospital: 12 beds, two to a room (R1..R6).
WARD = "GER"
WARD_BEDS = tuple((str(n), f"R{(n + 1) // 2}") for n in range(1, 13))
#: One demo user per role, named after it so nobody has to look names up.
USERS = (
    ("radiologist", Role.RADIOLOGIST, "Demo Radiologist"),
    ("physician", Role.PHYSICIAN, "Demo Physician"),
    ("nurse", Role.NURSE, "Demo Nurse"),
    ("ai_owner", Role.AI_OWNER, "Demo AI Owner"),
    ("admin", Role.ADMIN, "Demo Administrator"),
    ("auditor", Role.AUDITOR, "Demo Auditor"),
)


def _add_hospital(db: Session, hospital: Hospital) -> None:
    site = create_site(db, code=hospital.code, name=hospital.name, actor=ACTOR)
    departments = {
        code: add_department(db, site_id=site.id, code=code, name=name, kind=kind, actor=ACTOR)
        for code, name, kind in DEPARTMENTS
    }
    for bed, room in WARD_BEDS:
        add_bed(db, ward_id=departments[WARD].id, code=bed, room=room, actor=ACTOR)
    add_dicom_node(
        db,
        site_id=site.id,
        ae_title=hospital.modality_ae,
        kind="modality",
        department_id=departments["RAD"].id,
        description=f"{hospital.modality} room 1 (synthetic studies)",
        actor=ACTOR,
    )
    add_dicom_node(
        db,
        site_id=site.id,
        ae_title=hospital.mammo_ae,
        kind="modality",
        department_id=departments["SCR"].id,
        description="Mammography unit (synthetic screening exams)",
        actor=ACTOR,
    )
    add_dicom_node(
        db,
        site_id=site.id,
        ae_title=hospital.pacs_ae,
        kind="pacs",
        department_id=departments["RAD"].id,
        host=hospital.pacs_host,
        port=104,
        description="Hospital PACS (fictional address)",
        actor=ACTOR,
    )


def create_hospitals(db: Session) -> list[Hospital]:
    """Return the demo hospitals that were missing and have now been added (sites,
    departments, a geriatric ward with 12 beds, a modality node and a PACS node each), in
    the caller's transaction."""
    added = []
    for hospital in HOSPITALS:
        if get_site_by_code(db, code=hospital.code) is None:
            _add_hospital(db, hospital)
            added.append(hospital)
    return added


def create_accounts(db: Session) -> list[Account]:
    """Return one account per role with a fresh random password, creating missing users
    and resetting the password of existing ones, in the caller's transaction."""
    accounts = []
    for username, role, full_name in USERS:
        password = generate_password()
        if get_user(db, username=username) is None:
            create_user(
                db,
                username=username,
                roles=[role],
                password=password,
                full_name=full_name,
                actor=ACTOR,
            )
        else:
            set_password(db, username=username, password=password, actor=ACTOR)
        accounts.append(Account(username, role, full_name, password))
    return accounts
