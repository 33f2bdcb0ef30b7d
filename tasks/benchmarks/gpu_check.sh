#!/usr/bin/env bash
# GPU smoke test and speed figures, one prepared script: Faster R-CNN R50-FPN at 800 px with mixed
# precision (trainer=gpu), 100 training steps on generated COCO-2017-shaped 640x480 JPEGs, with and
# without channels_last; prints images/s, peak GPU memory and the share of time the training loop
# waited for its data loader (tasks/benchmarks/throughput.py). The data are 256 distinct JPEGs behind
# TRAIN_IMAGES names (hard links), so decoding reads the page cache: the data-wait share is that of a
# warm cache. The backbone has random weights (offline) but the reference recipe's shape: frozen
# statistics, 3 trainable stages.
#
#   bash tasks/benchmarks/gpu_check.sh                 # on a GPU machine, from the repository root
#   STEPS=3 TRAIN_IMAGES=32 BATCHES="2" TRAINER=cpu \
#     EXTRA="backbone=resnet18 task.model.min_size=128 task.model.max_size=128" bash tasks/benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
DATA=${DATA:-${TMPDIR:-/tmp}/visionsuite-gpu-check}
OUT=${OUT:-${TMPDIR:-/tmp}/visionsuite-gpu-check-runs}
STEPS=${STEPS:-100}
TRAIN_IMAGES=${TRAIN_IMAGES:-2000}
BATCHES=${BATCHES:-"2 8"}
TRAINER=${TRAINER:-gpu}
EXTRA=${EXTRA:-}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
"$PYTHON" -m tasks.benchmarks.coco_like --root "$DATA" --train "$TRAIN_IMAGES" --val 50 --distinct 256
mkdir -p "$OUT"

for batch in $BATCHES; do
  for channels_last in false true; do
    run="$OUT/batch${batch}_channels_last_${channels_last}"
    echo "== batch $batch per device, channels_last=$channels_last"
    # shellcheck disable=SC2086  # EXTRA holds several overrides
    "$PYTHON" tasks/train.py task=detection dataset=coco "dataset.root=$DATA" trainer="$TRAINER" \
      backbone.weights=none backbone.norm=frozen_bn backbone.trainable_stages=3 \
      "dataset.batch_size=$batch" "trainer.max_steps=$STEPS" trainer.limit_val_batches=0 \
      trainer.enable_progress_bar=false "runtime.channels_last=$channels_last" \
      "+callbacks.throughput._target_=tasks.benchmarks.throughput.Throughput" \
      "+callbacks.throughput.warmup=$(( STEPS / 10 ))" "hydra.run.dir=$run" "paths.cache_dir=$OUT/cache" $EXTRA \
      2>"$run.log" | grep "^throughput:" || { tail -30 "$run.log"; exit 1; }
  done
done
