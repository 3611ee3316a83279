"""Hospitals, their departments (wards) and beds, and DICOM nodes: create, list, look up,
and map a calling AE to a site.

Every change is audited in the caller's transaction. A DICOM node is never deleted:
removing it deactivates it, so the trail of which AE title belonged to which hospital
stays readable, and adding the same AE title again re-activates the row.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lods.audit.service import record
from lods.sites.models import UNASSIGNED_SITE_CODE, Bed, Department, DicomNode, Site

NodeKind = Literal["modality", "pacs"]
DepartmentKind = Literal[
    "radiology", "emergency", "ward", "icu", "outpatient", "screening", "other"
]
NODE_KINDS = frozenset(get_args(NodeKind))
DEPARTMENT_KINDS = frozenset(get_args(DepartmentKind))
_CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
# DICOM PS3.5 table 6.2-1: AE is 16 bytes of the default repertoire, no backslash or controls.
_AE_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f]")


class SiteError(Exception):
    """A sites operation that cannot be done as asked."""


class NotFoundError(SiteError):
    """The site, department or node named does not exist."""


class ConflictError(SiteError):
    """A site code, department code or AE title that is already taken."""


def normalise_ae_title(value: str) -> str:
    """Return `value` as a valid AE title (surrounding spaces dropped) or raise ValueError.

    Leading and trailing spaces are not significant in an AE title (PS3.5 6.2), so they
    are removed; case is significant and kept.
    """
    if _AE_FORBIDDEN.search(value):
        raise ValueError("an AE title may not contain a backslash or control characters")
    title = value.strip(" ")
    if not title:
        raise ValueError("an AE title may not be empty or all spaces")
    if len(title) > 16:
        raise ValueError("an AE title is at most 16 characters")
    if not title.isascii():
        raise ValueError("an AE title uses only the DICOM default character repertoire (ASCII)")
    return title


def _check_code(code: str, what: str) -> str:
    if not _CODE_RE.match(code):
        raise ValueError(
            f"a {what} code is 1 to 32 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return code


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("a name is 1 to 200 characters")
    return name


# --- sites ---------------------------------------------------------------------------------


def get_site_by_code(db: Session, *, code: str) -> Site | None:
    """Return the site with this code, or None."""
    return db.scalar(select(Site).where(Site.code == code))


def get_site(db: Session, *, site_id: int) -> Site:
    """Return the site with this id, or raise NotFoundError."""
    site = db.get(Site, site_id)
    if site is None:
        raise NotFoundError(f"no site with id {site_id}")
    return site


def get_site_by_code_or_raise(db: Session, *, code: str) -> Site:
    """Return the site with this code, or raise NotFoundError."""
    site = get_site_by_code(db, code=code)
    if site is None:
        raise NotFoundError(f"no site with code {code!r}")
    return site


def list_sites(db: Session) -> list[Site]:
    """Return every site, ordered by code."""
    return list(db.scalars(select(Site).order_by(Site.code)))


def create_site(db: Session, *, code: str, name: str, actor: str, source: str = "") -> Site:
    """Return a new site after checking its code is free; the change is audited."""
    _check_code(code, "site")
    name = _check_name(name)
    if get_site_by_code(db, code=code) is not None:
        raise ConflictError(f"a site with code {code!r} already exists")
    site = Site(code=code, name=name)
    db.add(site)
    db.flush()
    record(
        db,
        actor=actor,
        action="site.create",
        object_ref=f"site:{code}",
        source=source,
        detail={"code": code, "name": name},
    )
    return site


def rename_site(db: Session, *, site_id: int, name: str, actor: str, source: str = "") -> Site:
    """Return the site after giving it a new display name; the change is audited."""
    site = get_site(db, site_id=site_id)
    old, site.name = site.name, _check_name(name)
    db.flush()
    record(
        db,
        actor=actor,
        action="site.update",
        object_ref=f"site:{site.code}",
        source=source,
        detail={"name": {"from": old, "to": site.name}},
    )
    return site


def unassigned_site(db: Session) -> Site:
    """Return the site that unknown calling AE titles land in, creating it on first use."""
    site = get_site_by_code(db, code=UNASSIGNED_SITE_CODE)
    if site is not None:
        return site
    try:
        # A savepoint: two associations may race to create it (on PostgreSQL).
        with db.begin_nested():
            return create_site(
                db, code=UNASSIGNED_SITE_CODE, name="Unassigned (unknown sender)", actor="system"
            )
    except IntegrityError:
        return get_site_by_code_or_raise(db, code=UNASSIGNED_SITE_CODE)


# --- departments ---------------------------------------------------------------------------


def list_departments(db: Session, *, site_id: int | None = None) -> list[Department]:
    """Return departments (of one site when `site_id` is given), ordered by site and code."""
    query = select(Department).order_by(Department.site_id, Department.code)
    if site_id is not None:
        query = query.where(Department.site_id == site_id)
    return list(db.scalars(query))


def get_department(db: Session, *, site_id: int, code: str) -> Department:
    """Return the department of a site with this code, or raise NotFoundError."""
    dept = db.scalar(
        select(Department).where(Department.site_id == site_id, Department.code == code)
    )
    if dept is None:
        raise NotFoundError(f"no department {code!r} at this site")
    return dept


def add_department(
    db: Session,
    *,
    site_id: int,
    code: str,
    name: str,
    kind: str = "other",
    actor: str,
    source: str = "",
) -> Department:
    """Return a new department of a site; its code is unique within the site; audited."""
    site = get_site(db, site_id=site_id)
    _check_code(code, "department")
    name = _check_name(name)
    if kind not in DEPARTMENT_KINDS:
        raise ValueError(f"department kind must be one of {', '.join(sorted(DEPARTMENT_KINDS))}")
    taken = db.scalar(
        select(Department).where(Department.site_id == site.id, Department.code == code)
    )
    if taken is not None:
        raise ConflictError(f"site {site.code!r} already has a department {code!r}")
    dept = Department(site_id=site.id, code=code, name=name, kind=kind)
    db.add(dept)
    db.flush()
    record(
        db,
        actor=actor,
        action="department.create",
        object_ref=f"department:{site.code}/{code}",
        source=source,
        detail={"site": site.code, "code": code, "name": name, "kind": kind},
    )
    return dept


# --- wards and beds ------------------------------------------------------------------------

#: Department kinds whose beds are monitored (vitals, room sensors, ward board).
BED_KINDS = frozenset({"ward", "icu", "emergency"})


def find_ward(db: Session, *, ward_code: str, site_code: str | None = None) -> Department | None:
    """The ward with this code (HL7 PV1-3.1, the sensor topic's ward): at `site_code`'s
    site when given, else the only bed-holding department with that code anywhere."""
    query = select(Department).where(
        Department.code == ward_code, Department.kind.in_(sorted(BED_KINDS))
    )
    if site_code:
        query = query.join(Site, Site.id == Department.site_id).where(Site.code == site_code)
    found = list(db.scalars(query.limit(2)))
    return found[0] if len(found) == 1 else None


def find_bed(
    db: Session, *, ward_code: str, bed_code: str, site_code: str | None = None
) -> Bed | None:
    """The active bed `bed_code` of ward `ward_code` (see `find_ward`), or None."""
    ward = find_ward(db, ward_code=ward_code, site_code=site_code)
    if ward is None:
        return None
    return db.scalar(
        select(Bed).where(Bed.ward_id == ward.id, Bed.code == bed_code, Bed.is_active.is_(True))
    )


def list_beds(db: Session, *, ward_id: int) -> list[Bed]:
    """The ward's active beds, by room and code."""
    return list(
        db.scalars(
            select(Bed)
            .where(Bed.ward_id == ward_id, Bed.is_active.is_(True))
            .order_by(Bed.room, Bed.code)
        )
    )


def add_bed(
    db: Session, *, ward_id: int, code: str, room: str = "", actor: str, source: str = ""
) -> Bed:
    """A new bed of a ward (a department of kind ward, icu or emergency); audited. Adding a
    removed bed's code again re-activates it."""
    ward = db.get(Department, ward_id)
    if ward is None:
        raise NotFoundError(f"no ward {ward_id}")
    if ward.kind not in BED_KINDS:
        raise ValueError(f"department {ward.code!r} is a {ward.kind} department, not a ward")
    _check_code(code, "bed")
    if room:
        _check_code(room, "room")
    bed = db.scalar(select(Bed).where(Bed.ward_id == ward_id, Bed.code == code))
    if bed is not None and bed.is_active:
        raise ConflictError(f"ward {ward.code!r} already has a bed {code!r}")
    if bed is None:
        bed = Bed(ward_id=ward_id, code=code, room=room)
        db.add(bed)
    else:
        bed.is_active, bed.room = True, room
    db.flush()
    record(
        db,
        actor=actor,
        action="bed.create",
        object_ref=f"bed:{ward.code}/{code}",
        source=source,
        detail={"ward": ward.code, "code": code, "room": room},
    )
    return bed


# --- DICOM nodes ---------------------------------------------------------------------------


def get_node(db: Session, *, ae_title: str) -> DicomNode | None:
    """Return the node (active or not) with this AE title, or None."""
    return db.scalar(select(DicomNode).where(DicomNode.ae_title == normalise_ae_title(ae_title)))


def list_nodes(
    db: Session, *, site_id: int | None = None, include_inactive: bool = False
) -> list[DicomNode]:
    """Return DICOM nodes ordered by AE title, active ones only unless asked otherwise."""
    query = select(DicomNode).order_by(DicomNode.ae_title)
    if site_id is not None:
        query = query.where(DicomNode.site_id == site_id)
    if not include_inactive:
        query = query.where(DicomNode.is_active.is_(True))
    return list(db.scalars(query))


def _check_node_fields(kind: str, host: str | None, port: int | None) -> None:
    if kind not in NODE_KINDS:
        raise ValueError(f"node kind must be one of {', '.join(sorted(NODE_KINDS))}")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("a port is between 1 and 65535")
    if host is not None and (not host.strip() or len(host) > 255):
        raise ValueError("a host name is 1 to 255 characters")


def _check_department(db: Session, *, site_id: int, department_id: int | None) -> None:
    if department_id is None:
        return
    dept = db.get(Department, department_id)
    if dept is None or dept.site_id != site_id:
        raise NotFoundError(f"site {site_id} has no department with id {department_id}")


def add_dicom_node(
    db: Session,
    *,
    site_id: int,
    ae_title: str,
    kind: str = "modality",
    actor: str,
    department_id: int | None = None,
    host: str | None = None,
    port: int | None = None,
    description: str = "",
    source: str = "",
) -> DicomNode:
    """Return the new (or re-activated) node for `ae_title` at a site; audited as node.add.

    An AE title belongs to one node; adding one that is active raises ConflictError, adding
    one that was removed brings the row back with the new details.
    """
    title = normalise_ae_title(ae_title)
    _check_node_fields(kind, host, port)
    site = get_site(db, site_id=site_id)
    _check_department(db, site_id=site.id, department_id=department_id)
    node = db.scalar(select(DicomNode).where(DicomNode.ae_title == title))
    if node is not None and node.is_active:
        raise ConflictError(f"AE title {title!r} is already registered")
    if node is None:
        node = DicomNode(ae_title=title)
        db.add(node)
    node.site_id, node.department_id, node.kind = site.id, department_id, kind
    node.host, node.port = (host.strip() if host else None), port
    node.description, node.is_active = description.strip()[:200], True
    db.flush()
    record(
        db,
        actor=actor,
        action="node.add",
        object_ref=f"node:{title}",
        source=source,
        detail={"ae_title": title, "site": site.code, "kind": kind, "host": host, "port": port},
    )
    return node


def remove_dicom_node(db: Session, *, ae_title: str, actor: str, source: str = "") -> DicomNode:
    """Return the node after deactivating it, so its AE title is refused again; audited."""
    node = get_node(db, ae_title=ae_title)
    if node is None or not node.is_active:
        raise NotFoundError(f"no active DICOM node with AE title {ae_title.strip()!r}")
    node.is_active = False
    db.flush()
    record(
        db,
        actor=actor,
        action="node.remove",
        object_ref=f"node:{node.ae_title}",
        source=source,
        detail={"ae_title": node.ae_title, "site": node.site.code},
    )
    return node


def known_ae_titles(db: Session) -> frozenset[str]:
    """Return the AE titles of every active node."""
    return frozenset(db.scalars(select(DicomNode.ae_title).where(DicomNode.is_active.is_(True))))


def site_for_calling_ae(db: Session, *, ae_title: str, accept_unknown: bool) -> Site | None:
    """Return the site a calling AE title belongs to; None when it is unknown and refused.

    Only active nodes count as known. With `accept_unknown`, any other caller's data
    lands in the "unassigned" site (created on first use) for an admin to sort out.
    """
    try:
        title = normalise_ae_title(ae_title)
    except ValueError:
        title = None
    if title is not None:
        site = db.scalar(
            select(Site)
            .join(DicomNode, DicomNode.site_id == Site.id)
            .where(DicomNode.ae_title == title, DicomNode.is_active.is_(True))
        )
        if site is not None:
            return site
    return unassigned_site(db) if accept_unknown else None


def node_counts(db: Session) -> dict[int, int]:
    """Return the number of active nodes per site id."""
    rows = db.execute(
        select(DicomNode.site_id, func.count())
        .where(DicomNode.is_active.is_(True))
        .group_by(DicomNode.site_id)
    )
    return {int(site_id): int(n) for site_id, n in rows}
