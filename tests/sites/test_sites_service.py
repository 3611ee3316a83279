"""Hospitals, departments and DICOM nodes, and which site a calling AE title sends for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.audit import service as audit
from lods.audit.models import AuditEvent
from lods.runtime import Runtime
from lods.sites import service
from lods.sites.models import UNASSIGNED_SITE_CODE, Site


@pytest.fixture
def db(runtime: Runtime) -> Iterator[Session]:
    """A session in a transaction, rolled back at the end unless the test committed."""
    with runtime.sessions() as session:
        session.begin()
        yield session
        session.rollback()


def hospital(db: Session, code: str = "AUH", ae_titles: tuple[str, ...] = ("CR_ROOM1",)) -> Site:
    site = service.create_site(db, code=code, name=f"{code} Hospital", actor="ada")
    for ae in ae_titles:
        service.add_dicom_node(db, site_id=site.id, ae_title=ae, actor="ada")
    return site


def audited(db: Session) -> list[tuple[str, str | None]]:
    return [
        (e.action, e.object_ref) for e in db.scalars(select(AuditEvent).order_by(AuditEvent.seq))
    ]


# --- sites and departments ---------------------------------------------------------------


def test_create_site_is_audited_and_found_by_code(db: Session) -> None:
    site = service.create_site(db, code="AUH", name="Aarhus University Hospital", actor="ada")
    assert service.get_site_by_code(db, code="AUH") is site
    assert service.get_site_by_code(db, code="RHG") is None
    assert audited(db) == [("site.create", "site:AUH")]


def test_create_site_refuses_a_taken_code(db: Session) -> None:
    hospital(db)
    with pytest.raises(service.ConflictError):
        service.create_site(db, code="AUH", name="Again", actor="ada")


@pytest.mark.parametrize("code", ["", "has space", "-lead", "x" * 33, "æøå"])
def test_create_site_refuses_a_bad_code(db: Session, code: str) -> None:
    with pytest.raises(ValueError, match="code"):
        service.create_site(db, code=code, name="Hospital", actor="ada")


def test_rename_site_keeps_the_code_and_is_audited(db: Session) -> None:
    site = hospital(db)
    service.rename_site(db, site_id=site.id, name="Aarhus Universitetshospital", actor="ada")
    assert (site.code, site.name) == ("AUH", "Aarhus Universitetshospital")
    assert audited(db)[-1] == ("site.update", "site:AUH")


def test_departments_are_unique_within_a_site(db: Session) -> None:
    auh, rh = hospital(db, "AUH"), hospital(db, "RH", ("CT1",))
    service.add_department(
        db, site_id=auh.id, code="RAD", name="Radiology", kind="radiology", actor="ada"
    )
    service.add_department(
        db, site_id=rh.id, code="RAD", name="Radiologi", kind="radiology", actor="ada"
    )
    with pytest.raises(service.ConflictError):
        service.add_department(db, site_id=auh.id, code="RAD", name="Again", actor="ada")
    with pytest.raises(ValueError, match="kind"):
        service.add_department(db, site_id=auh.id, code="X", name="X", kind="spa", actor="ada")
    assert [d.code for d in service.list_departments(db, site_id=auh.id)] == ["RAD"]
    assert ("department.create", "department:RH/RAD") in audited(db)


# --- DICOM nodes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("CR_ROOM1", "CR_ROOM1"),
        ("  PACS  ", "PACS"),
        ("A" * 16, "A" * 16),
        ("mixed Case", "mixed Case"),
    ],
)
def test_add_node_accepts_valid_ae_titles(db: Session, given: str, stored: str) -> None:
    site = hospital(db, ae_titles=())
    node = service.add_dicom_node(db, site_id=site.id, ae_title=given, kind="pacs", actor="ada")
    assert node.ae_title == stored
    assert service.known_ae_titles(db) == frozenset({stored})


@pytest.mark.parametrize(
    "bad", ["", "    ", "A" * 17, "BACK\\SLASH", "TAB\tBED", "NEW\nLINE", "NUL\x00", "ÆBLE"]
)
def test_add_node_refuses_invalid_ae_titles(db: Session, bad: str) -> None:
    site = hospital(db, ae_titles=())
    with pytest.raises(ValueError, match="AE title"):
        service.add_dicom_node(db, site_id=site.id, ae_title=bad, actor="ada")
    assert service.known_ae_titles(db) == frozenset()


def test_add_node_refuses_a_taken_ae_title_even_at_another_site(db: Session) -> None:
    hospital(db, "AUH", ("CR_ROOM1",))
    rh = hospital(db, "RH", ())
    with pytest.raises(service.ConflictError):
        service.add_dicom_node(db, site_id=rh.id, ae_title="CR_ROOM1", actor="ada")


def test_add_node_checks_kind_port_and_department(db: Session) -> None:
    auh, rh = hospital(db, "AUH", ()), hospital(db, "RH", ())
    other_dept = service.add_department(
        db, site_id=rh.id, code="RAD", name="Radiologi", actor="ada"
    )
    with pytest.raises(ValueError, match="kind"):
        service.add_dicom_node(db, site_id=auh.id, ae_title="X", kind="printer", actor="ada")
    with pytest.raises(ValueError, match="port"):
        service.add_dicom_node(db, site_id=auh.id, ae_title="X", port=70000, actor="ada")
    with pytest.raises(service.NotFoundError):
        service.add_dicom_node(
            db, site_id=auh.id, ae_title="X", department_id=other_dept.id, actor="ada"
        )
    with pytest.raises(service.NotFoundError):
        service.add_dicom_node(db, site_id=9999, ae_title="X", actor="ada")


def test_remove_node_deactivates_and_re_adding_brings_it_back(db: Session) -> None:
    auh, rh = hospital(db, "AUH", ("CR_ROOM1",)), hospital(db, "RH", ())
    service.remove_dicom_node(db, ae_title="CR_ROOM1", actor="ada")
    assert service.known_ae_titles(db) == frozenset()
    assert [n.is_active for n in service.list_nodes(db, include_inactive=True)] == [False]
    with pytest.raises(service.NotFoundError):
        service.remove_dicom_node(db, ae_title="CR_ROOM1", actor="ada")
    node = service.add_dicom_node(
        db, site_id=rh.id, ae_title="CR_ROOM1", host="10.0.0.5", port=104, actor="ada"
    )
    assert (node.is_active, node.site_id, node.host, node.port) == (True, rh.id, "10.0.0.5", 104)
    assert auh.id != rh.id
    assert [a for a, _ in audited(db) if a.startswith("node.")] == [
        "node.add",
        "node.remove",
        "node.add",
    ]


# --- which site a caller sends for ----------------------------------------------------------


def test_site_for_calling_ae_finds_the_nodes_site(db: Session) -> None:
    auh = hospital(db, "AUH", ("CR_ROOM1", "CT_2"))
    hospital(db, "RH", ("MR_1",))
    assert service.site_for_calling_ae(db, ae_title="CT_2", accept_unknown=False) is auh
    assert service.site_for_calling_ae(db, ae_title="CT_2  ", accept_unknown=True) is auh


@pytest.mark.parametrize("caller", ["STRANGER", "ct_2", "", "BAD\\AE"])
def test_site_for_calling_ae_refuses_unknown_callers_by_default(db: Session, caller: str) -> None:
    hospital(db, "AUH", ("CT_2",))
    assert service.site_for_calling_ae(db, ae_title=caller, accept_unknown=False) is None
    assert service.get_site_by_code(db, code=UNASSIGNED_SITE_CODE) is None


def test_site_for_calling_ae_puts_unknown_callers_in_the_unassigned_site(
    runtime: Runtime, db: Session
) -> None:
    auh = hospital(db, "AUH", ("CT_2",))
    first = service.site_for_calling_ae(db, ae_title="STRANGER", accept_unknown=True)
    db.commit()
    with runtime.sessions() as other, other.begin():
        again = service.site_for_calling_ae(other, ae_title="SOMEONE", accept_unknown=True)
        assert again is not None and first is not None
        assert again.id == first.id != auh.id
        assert again.code == UNASSIGNED_SITE_CODE
        assert other.scalars(select(Site.code).order_by(Site.code)).all() == ["AUH", "unassigned"]


def test_site_for_calling_ae_refuses_a_removed_node(db: Session) -> None:
    hospital(db, "AUH", ("CT_2",))
    service.remove_dicom_node(db, ae_title="CT_2", actor="ada")
    assert service.site_for_calling_ae(db, ae_title="CT_2", accept_unknown=False) is None
    unassigned = service.site_for_calling_ae(db, ae_title="CT_2", accept_unknown=True)
    assert unassigned is not None and unassigned.code == UNASSIGNED_SITE_CODE


def test_unassigned_site_is_created_once_and_audited(db: Session) -> None:
    first = service.unassigned_site(db)
    assert service.unassigned_site(db) is first
    assert audited(db) == [("site.create", f"site:{UNASSIGNED_SITE_CODE}")]
    assert audit.verify(db)[1] == []
