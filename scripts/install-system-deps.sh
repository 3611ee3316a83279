#!/usr/bin/env bash
# Installs the Debian packages Lods' tests and benchmarks talk to, when they are missing:
# DCMTK (storescu/echoscu/storescp), Orthanc (a PACS), dicom3tools (dciodvfy), Chromium,
# and an MQTT broker (Mosquitto) on 127.0.0.1:1883 for the room-sensor tests, started here
# when the machine does not already run one.
set -euo pipefail

broker_up() { (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; }

need=()
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if ! broker_up && ! command -v mosquitto >/dev/null 2>&1; then need+=(mosquitto); fi

start_broker() {
  if ! broker_up; then
    echo "starting Mosquitto on 127.0.0.1:1883"
    mosquitto -d -p 1883
    for _ in $(seq 50); do broker_up && return 0; sleep 0.1; done
    echo "Mosquitto did not start" >&2
    return 1
  fi
}

if [ ${#need[@]} -eq 0 ]; then
  start_broker
  exit 0
fi
echo "installing Debian packages: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian package starts an Orthanc service on 4242/8042 where systemd runs; tests
# start their own instances on free ports, so stop the packaged one if it is running.
if command -v service >/dev/null 2>&1; then $SUDO service orthanc stop >/dev/null 2>&1 || true; fi
start_broker
