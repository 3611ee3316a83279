"""`lods-sim`: simulated bedside monitors and room sensors for the demo and tests.

    lods-sim monitors --site north --ward W7 --beds 1-12 --admit --speed 60
    lods-sim sensors --site north --ward W7 --beds 1-12 --rooms 701=1-2 --rooms 702=3-4

Both print a summary when they stop (after `--count` messages/events, `--duration`
seconds, or Ctrl-C); `--verbose` prints a line per message or event. Exit status 1 when
the receiver cannot be reached or something was not delivered.
"""

from __future__ import annotations

from typing import Annotated

import typer

from lods.sim import monitors, sensors

app = typer.Typer(
    help="Simulated bedside monitors (HL7 v2 over MLLP) and room sensors (MQTT or webhook) "
    "with synthetic patients, for demos and tests. Not a medical device.",
    no_args_is_help=True,
)

Site = Annotated[str, typer.Option(help="Site code (MSH-4/MSH-6; the sensor topic)")]
Ward = Annotated[str, typer.Option(help="Ward code (PV1-3.1; the sensor topic)")]
Beds = Annotated[str, typer.Option(help="Bed codes: e.g. 1-12, or 01-12, or A1-A4,B2")]
Rooms = Annotated[
    list[str] | None,
    typer.Option(help="ROOM=BEDS, repeatable, e.g. --rooms 701=1-2 --rooms 702=3-4"),
]
Seed = Annotated[int, typer.Option(help="Seed of the model: same seed, same ward")]
Count = Annotated[int | None, typer.Option(help="Stop after this many messages or events")]
Duration = Annotated[float | None, typer.Option(help="Stop after this many seconds")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="A line per message or event")]


def _beds_and_rooms(beds: str, rooms: list[str] | None) -> tuple[list[str], dict[str, str]]:
    try:
        codes = monitors.parse_beds(beds)
        return codes, monitors.parse_rooms(rooms or [], codes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _echo(line: str) -> None:
    typer.echo(line)


@app.command("monitors")
def monitors_command(
    host: Annotated[str, typer.Option(help="Lods' MLLP listener")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Its port (LODS_HL7_PORT)")] = 2575,
    site: Site = "north",
    ward: Ward = "W7",
    beds: Beds = "1-12",
    rooms: Rooms = None,
    interval: Annotated[
        float, typer.Option(help="Minutes of simulated time between a bed's sets")
    ] = 60.0,
    speed: Annotated[
        float, typer.Option(help="Simulated minutes per wall minute (0: no waiting)")
    ] = 60.0,
    deteriorating: Annotated[int, typer.Option(help="How many patients deteriorate")] = 2,
    seed: Seed = 7,
    admit: Annotated[bool, typer.Option(help="First admit each bed's patient (ADT^A01)")] = False,
    connections: Annotated[int, typer.Option(help="MLLP connections (beds spread over them)")] = 1,
    count: Count = None,
    duration: Duration = None,
    faults: Annotated[
        bool, typer.Option(help="Now and then an invalid reading (X, sentinel) or an artefact")
    ] = True,
    issuer: Annotated[
        str, typer.Option(help="Assigning authority of the patient ids (PID-3.4)")
    ] = monitors.DEFAULT_ISSUER,
    verbose: Verbose = False,
) -> None:
    """Send vital signs (ORU^R01, IHE PCD-01) per bed over MLLP; some patients deteriorate."""
    bed_codes, room_of = _beds_and_rooms(beds, rooms)
    if connections < 1 or interval <= 0 or speed < 0:
        raise typer.BadParameter("connections ≥ 1, interval > 0 and speed ≥ 0")
    config = monitors.MonitorConfig(
        host=host,
        port=port,
        site=site,
        ward=ward,
        beds=bed_codes,
        rooms=room_of,
        interval_minutes=interval,
        speed=speed,
        deteriorating=deteriorating,
        seed=seed,
        admit=admit,
        connections=connections,
        count=count,
        duration=duration,
        faults=faults,
        issuer=issuer,
    )
    pace = "no waiting" if speed == 0 else f"one set per bed every {interval * 60 / speed:g} s"
    typer.echo(
        f"monitors: {len(bed_codes)} beds of {site}/{ward} → {host}:{port}, {pace}, "
        f"{deteriorating} deteriorating, seed {seed}"
    )
    summary = monitors.Summary()
    try:
        monitors.run_monitors(config, report=_echo if verbose else None, summary=summary)
    except OSError as exc:
        typer.echo(f"error: cannot reach the MLLP listener at {host}:{port}: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    except KeyboardInterrupt:
        typer.echo(f"stopped: {summary.line()}", err=True)
        raise typer.Exit(code=130) from None
    for error in summary.errors[:10]:
        typer.echo(f"  {error}", err=True)
    typer.echo(summary.line())
    if summary.unanswered:
        raise typer.Exit(code=1)


@app.command("sensors")
def sensors_command(
    host: Annotated[str, typer.Option(help="MQTT broker")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Its port")] = 1883,
    prefix: Annotated[
        str, typer.Option(help="Topic prefix (LODS_MQTT_TOPIC_PREFIX)")
    ] = "lods/sensors",
    site: Site = "north",
    ward: Ward = "W7",
    beds: Beds = "1-12",
    rooms: Rooms = None,
    rate: Annotated[float, typer.Option(help="Bed-exit episodes per bed per hour")] = 1.0,
    fall_share: Annotated[float, typer.Option(help="Share of episodes ending in a fall")] = 0.05,
    false_alarms: Annotated[
        float, typer.Option(help="Low-confidence false alarms per bed per hour")
    ] = 0.1,
    speed: Annotated[
        float, typer.Option(help="Time runs this many times faster (0: no waiting)")
    ] = 1.0,
    seed: Seed = 7,
    count: Count = None,
    duration: Duration = None,
    webhook: Annotated[
        str | None, typer.Option(help="POST to Lods at this base URL instead of MQTT")
    ] = None,
    token: Annotated[
        str, typer.Option(help="Bearer token for --webhook", envvar="LODS_SIM_TOKEN")
    ] = "",
    verbose: Verbose = False,
) -> None:
    """Publish room-sensor events (bed exits, falls) over MQTT, or POST them to the webhook."""
    bed_codes, room_of = _beds_and_rooms(beds, rooms)
    if webhook and not token:
        raise typer.BadParameter("--webhook needs --token (an API token of an integration user)")
    if speed < 0:
        raise typer.BadParameter("speed ≥ 0")
    config = sensors.SensorConfig(
        site=site,
        ward=ward,
        beds=bed_codes,
        rooms={bed: room for bed, room in room_of.items() if room},
        host=host,
        port=port,
        prefix=prefix,
        webhook=webhook,
        token=token,
        rate=rate,
        fall_share=fall_share,
        false_alarm_rate=false_alarms,
        seed=seed,
        speed=speed,
        count=count,
        duration=duration,
    )
    target = webhook or f"mqtt://{host}:{port}/{prefix}"
    typer.echo(f"sensors: {len(bed_codes)} beds of {site}/{ward} → {target}, seed {seed}")
    summary = sensors.SensorSummary()
    try:
        sensors.run_sensors(config, report=_echo if verbose else None, summary=summary)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: cannot send to {target}: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    except KeyboardInterrupt:
        typer.echo(f"stopped: {summary.line()}", err=True)
        raise typer.Exit(code=130) from None
    for error in summary.errors[:10]:
        typer.echo(f"  {error}", err=True)
    typer.echo(summary.line())
    if summary.delivered < summary.sent:
        raise typer.Exit(code=1)
