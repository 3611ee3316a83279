#!/usr/bin/env bash
# Installs the Debian packages Lods' tests and benchmarks talk to, when they are missing:
# DCMTK (storescu/echoscu/storescp), Orthanc (a PACS), dicom3tools (dciodvfy), Chromium.
set -euo pipefail

need=()
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v chromium >/dev/null 2>&1 || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
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
