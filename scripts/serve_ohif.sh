#!/usr/bin/env bash
# The whole OHIF stack on loopback: Orthanc (DICOMweb) with the sample studies as DICOM series, and LIM-Net Label
# reading from it. Then open http://127.0.0.1:8000/ohif/ in a browser (MONAI Label mode for the panel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
bash scripts/install_orthanc.sh
.venv/bin/python scripts/make_studies.py studies
mkdir -p runs/orthanc
ORTHANC_PORT=${ORTHANC_PORT:-8042}
.venv/bin/python scripts/orthanc.py start runs/orthanc --port "$ORTHANC_PORT" > runs/orthanc/orthanc.log 2>&1 &
ORTHANC_PID=$!
trap 'kill $ORTHANC_PID 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$ORTHANC_PORT/system" >/dev/null && break; sleep 1; done
if [ "$(curl -s "http://127.0.0.1:$ORTHANC_PORT/series")" = "[]" ]; then
  .venv/bin/python scripts/orthanc.py upload "http://127.0.0.1:$ORTHANC_PORT" studies/mni152_t1.nii.gz studies/mni152_t1_5mm.nii.gz --modality MR
  .venv/bin/python scripts/orthanc.py upload "http://127.0.0.1:$ORTHANC_PORT" studies/synthetic_ct.nii.gz --modality CT
fi
export PATH="$PWD/.venv/bin:$PATH"
monailabel start_server --app apps/limnet --studies "http://127.0.0.1:$ORTHANC_PORT/dicom-web" --conf models limnet \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
