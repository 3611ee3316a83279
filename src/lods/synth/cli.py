"""`lods synth xray|mammo`: write labelled synthetic cases, and optionally send them.

The cases are DICOM files (one folder per case) plus `labels.json` and `labels.csv`,
deterministic for a seed. `--send HOST:PORT` sends each case as one association, as a
modality would, calling with `--calling-ae` (register it as a node of a site first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pydicom
import typer
from pydicom.dataset import Dataset

from lods.demo.sender import SendError, send_study

app = typer.Typer(
    help="Synthetic, labelled test cases (demonstration and validation).", no_args_is_help=True
)

Count = Annotated[int, typer.Option("--count", min=1, max=100_000, help="How many cases")]
Out = Annotated[Path, typer.Option("--out", help="Folder to write the cases into")]
Seed = Annotated[int, typer.Option("--seed", help="Same seed, same cases")]
Prevalence = Annotated[
    float, typer.Option("--prevalence", min=0.0, max=1.0, help="Fraction of positive cases")
]
Size = Annotated[
    int | None,
    typer.Option("--size", min=256, max=4096, help="Image side in pixels (default: realistic)"),
]
Send = Annotated[
    str | None, typer.Option("--send", help="HOST:PORT of a DICOM node to send them to")
]
CalledAe = Annotated[str, typer.Option("--called-ae", help="The node's AE title")]
CallingAe = Annotated[str, typer.Option("--calling-ae", help="Our AE title (a registered node)")]


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise typer.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _send(labels: Path, target: str, *, called_ae: str, calling_ae: str) -> None:
    host, port = _host_port(target)
    data = json.loads(labels.read_text(encoding="utf-8"))
    failed = 0
    for case in data["cases"]:
        datasets: list[Dataset] = [pydicom.dcmread(labels.parent / n) for n in case["files"]]
        try:
            result = send_study(
                datasets, host=host, port=port, called_ae=called_ae, calling_ae=calling_ae
            )
        except SendError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from exc
        failed += len(result.failed)
        for problem in result.failed:
            typer.echo(f"  refused: {problem}", err=True)
    sent = len(data["cases"])
    typer.echo(
        f"sent {sent} cases to {called_ae}@{host}:{port}"
        + (f", {failed} images refused" if failed else "")
    )
    if failed:
        raise typer.Exit(code=1)


def _summary(labels: Path) -> None:
    data = json.loads(labels.read_text(encoding="utf-8"))
    cases = data["cases"]
    positive = sum(1 for c in cases if c["label"])
    files = sum(len(c["files"]) for c in cases)
    typer.echo(f"wrote {len(cases)} cases ({positive} positive, {files} images) and {labels}")


@app.command("xray")
def xray(
    count: Count = 20,
    out: Out = Path("synthetic-xray"),
    seed: Seed = 1,
    prevalence: Prevalence = 0.5,
    size: Size = None,
    send: Send = None,
    called_ae: CalledAe = "LODS",
    calling_ae: CallingAe = "SYNTH_DX",
) -> None:
    """Limb radiographs (hand, wrist, forearm, ankle, lower leg) with and without fractures."""
    from lods.synth.cases import write_xray_cases

    labels = write_xray_cases(out, count=count, seed=seed, prevalence=prevalence, size=size)
    _summary(labels)
    if send:
        _send(labels, send, called_ae=called_ae, calling_ae=calling_ae)


@app.command("mammo")
def mammo(
    count: Count = 20,
    out: Out = Path("synthetic-mammo"),
    seed: Seed = 1,
    prevalence: Prevalence = 0.5,
    size: Size = None,
    send: Send = None,
    called_ae: CalledAe = "LODS",
    calling_ae: CallingAe = "SYNTH_MG",
) -> None:
    """Four-view screening mammograms with and without masses or calcifications."""
    from lods.synth.mammo import write_mammo_cases

    labels = write_mammo_cases(out, count=count, seed=seed, prevalence=prevalence, size=size)
    _summary(labels)
    if send:
        _send(labels, send, called_ae=called_ae, calling_ae=calling_ae)
