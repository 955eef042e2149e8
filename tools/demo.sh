#!/usr/bin/env bash
# The embedded demo, CPU only: generate the synthetic COCO dataset, train configs/detr2d/demo.py from
# scratch, evaluate it with tools/test.py (pycocotools) and draw predictions on a few val images (the
# detections scoring at least tools/predict.py's default, 0.3: at 0.5 most true detections would be lost).
#
#   tools/demo.sh                     # outputs in work_dirs/demo, data in data/synthetic_coco
#   DEMO_OUT=/tmp/demo DEMO_DATA=/tmp/shapes PYTHON=.venv/bin/python tools/demo.sh
#
# Re-running continues (or reuses) the previous training run in DEMO_OUT instead of overwriting it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
DATA=${DEMO_DATA:-data/synthetic_coco}
OUT=${DEMO_OUT:-work_dirs/demo}
CONFIG=configs/detr2d/demo.py
start=$(date +%s)
stamp() { echo "[demo $(($(date +%s) - start)) s] $*"; }

stamp "1/4 synthetic dataset -> $DATA"
"$PYTHON" -m datasets.synthetic_coco "$DATA" --num-train 2000 --num-val 200 --image-size 96 \
  --max-objects 3 --min-scale 0.2 --max-scale 0.5 --seed 0

resume=()
if [[ -f "$OUT/checkpoint.pth" ]]; then
  resume=(--resume "$OUT/checkpoint.pth")
  stamp "found $OUT/checkpoint.pth: continuing that run"
fi
stamp "2/4 training $CONFIG -> $OUT"
"$PYTHON" tools/train.py "$CONFIG" --out "$OUT" "${resume[@]}" "data.root=$DATA"

stamp "3/4 COCO evaluation of the val split -> $OUT/eval"
"$PYTHON" tools/test.py "$CONFIG" "$OUT/checkpoint.pth" --out "$OUT/eval" "data.root=$DATA"

stamp "4/4 predictions on 8 val images -> $OUT/predict"
"$PYTHON" tools/predict.py "$CONFIG" "$OUT/checkpoint.pth" "$DATA/val2017" --limit 8 --out "$OUT/predict" \
  "data.root=$DATA"

ap=$("$PYTHON" -c "import json, sys; print(f\"{json.load(open(sys.argv[1]))['AP']:.3f}\")" "$OUT/eval/metrics.json")
stamp "done in $(($(date +%s) - start)) s: COCO AP (IoU .50:.95) on the synthetic val split = $ap (target >= 0.5)"
echo "  training log:  $OUT/log.jsonl, $OUT/train.log"
echo "  checkpoint:    $OUT/checkpoint.pth"
echo "  metrics:       $OUT/eval/metrics.json, detections: $OUT/eval/detections.json"
echo "  drawings:      $OUT/predict/*.png, detections: $OUT/predict/predictions.json"
