#!/usr/bin/env bash
# The BEV demo, CPU only: generate a synthetic nuScenes dataset, index it with the devkit, train
# configs/bev/demo.py (one history frame per sample) with its image backbone initialized from the COCO
# demo's checkpoint (COCO as the first stage: `make demo` runs first when that checkpoint is absent),
# evaluate it with tools/test.py (sequential test, official nuScenes DetectionEval) and draw BEV and
# camera pictures of val samples (boxes scoring at least tools/predict.py's default 0.3).
#
#   tools/demo_bev.sh                 # outputs in work_dirs/demo_bev, data in data/synthetic_nuscenes
#   DEMO_BEV_OUT=/tmp/bev DEMO_BEV_DATA=/tmp/nusc PYTHON=.venv/bin/python tools/demo_bev.sh
#   DEMO_BEV_INIT=/tmp/demo/checkpoint.pth tools/demo_bev.sh   # another 2D checkpoint as first stage
#   DEMO_BEV_INIT=none tools/demo_bev.sh                         # from scratch (the comparison run)
#
# An existing dataset in DEMO_BEV_DATA is reused; re-running continues (or reuses) the previous
# training run in DEMO_BEV_OUT instead of overwriting it. Torch's default intra-op threads (one per
# core) are used; on a machine busy with other jobs OMP_NUM_THREADS=1 can be faster.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
DATA=${DEMO_BEV_DATA:-data/synthetic_nuscenes}
OUT=${DEMO_BEV_OUT:-work_dirs/demo_bev}
CONFIG=configs/bev/demo.py
INIT=${DEMO_BEV_INIT:-${DEMO_OUT:-work_dirs/demo}/checkpoint.pth}
DATA_ARGS=("data.root=$DATA" "data.infos_dir=$DATA/infos")
start=$(date +%s)
stamp() { echo "[demo-bev $(($(date +%s) - start)) s] $*"; }

if [[ -d "$DATA/v1.0-mini" ]]; then
  stamp "1/5 synthetic nuScenes: reusing $DATA"
else
  stamp "1/5 synthetic nuScenes -> $DATA"
  "$PYTHON" tools/create_data.py synthetic-nuscenes --out "$DATA" --scenes 40 --samples 10 \
    --image-size 192 108 --seed 0
fi
stamp "2/5 infos (devkit) -> $DATA/infos"
"$PYTHON" tools/create_data.py nuscenes --root "$DATA" --version v1.0-mini --out "$DATA/infos" \
  --splits synthetic_train synthetic_val

resume=()
if [[ -f "$OUT/checkpoint.pth" ]]; then
  resume=(--resume "$OUT/checkpoint.pth")
  stamp "found $OUT/checkpoint.pth: continuing that run"
elif [[ "$INIT" != none ]]; then
  if [[ ! -f "$INIT" ]]; then
    if [[ -n "${DEMO_BEV_INIT:-}" ]]; then
      echo "DEMO_BEV_INIT=$INIT: no such checkpoint (DEMO_BEV_INIT=none trains from scratch)" >&2
      exit 2
    fi
    stamp "no COCO demo checkpoint at $INIT: running the COCO demo first (tools/demo.sh)"
    coco_start=$(date +%s)
    PYTHON="$PYTHON" bash tools/demo.sh
    coco_seconds=$(($(date +%s) - coco_start))
    start=$((start + coco_seconds))  # the stamps below count the BEV stage only
    stamp "COCO demo done in $coco_seconds s"
  fi
  resume=(--init-from "$INIT")
  stamp "image backbone from $INIT (COCO as the first stage)"
else
  stamp "image backbone from scratch (DEMO_BEV_INIT=none)"
fi
stamp "3/5 training $CONFIG -> $OUT"
"$PYTHON" tools/train.py "$CONFIG" --out "$OUT" "${resume[@]}" "${DATA_ARGS[@]}"

stamp "4/5 official nuScenes evaluation of the val split -> $OUT/eval"
"$PYTHON" tools/test.py "$CONFIG" "$OUT/checkpoint.pth" --out "$OUT/eval" "${DATA_ARGS[@]}"

stamp "5/5 BEV and camera pictures of 6 val samples -> $OUT/predict"
"$PYTHON" tools/predict.py "$CONFIG" "$OUT/checkpoint.pth" "$DATA/infos/nuscenes_infos_synthetic_val.json" \
  --limit 6 --out "$OUT/predict" "${DATA_ARGS[@]}"

read -r nds map < <("$PYTHON" -c "import json, sys; m = json.load(open(sys.argv[1])); print(f\"{m['NDS']:.3f} {m['mAP']:.3f}\")" "$OUT/eval/metrics.json")
stamp "done in $(($(date +%s) - start)) s: nuScenes NDS = $nds (target >= 0.40), mAP = $map on the synthetic val split"
echo "  training log:  $OUT/log.jsonl, $OUT/train.log"
echo "  checkpoint:    $OUT/checkpoint.pth"
echo "  metrics:       $OUT/eval/metrics.json (devkit: $OUT/eval/metrics_summary.json, results_nusc.json)"
echo "  pictures:      $OUT/predict/*_bev.png, $OUT/predict/*_cameras.jpg, boxes: $OUT/predict/predictions.json"
