"""DICOMweb (PS3.18) under /dicom-web: STOW-RS, QIDO-RS and WADO-RS, for machines and OHIF.

Reads need an imaging reader role, STOW-RS an imaging writer role; a bearer token or a
session cookie both work. The routes live in `dicomweb_stow`, `dicomweb_qido` and
`dicomweb_wado`; the app includes `ROUTERS` in this order under `PREFIX`.
"""

from __future__ import annotations

from lods.imaging import dicomweb_qido, dicomweb_stow, dicomweb_wado
from lods.imaging.dicomweb_common import PREFIX

__all__ = ["PREFIX", "ROUTERS"]

# QIDO first: its fixed paths (/studies/{uid}/series) must win over WADO's patterns.
ROUTERS = (dicomweb_qido.router, dicomweb_stow.router, dicomweb_wado.router)
