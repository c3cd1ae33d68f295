#!/usr/bin/env bash
# Orthanc and its DICOMweb plugin from Debian's packages (needs root), if not installed yet.
set -euo pipefail
if command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null
