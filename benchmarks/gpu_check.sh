#!/usr/bin/env bash
# Issue 20's GPU check, one script of a few minutes (needs a CUDA machine; nothing here was run on one):
# ResNet-50 224² training steps, float (ERM) vs QT-DoG W7 (`paper`) and W8A8 (`trt`, `ort`), batch 96, channels-last,
# AMP bf16 and off (img/s and the quantized/float ratio, target <= 1.3x); then, with 2 GPUs or more, a 2-process
# DDP smoke run of `train` under torchrun.
set -euo pipefail
out=${OUT:-gpu_check}
mkdir -p "$out"
for amp in bf16 off; do
  python benchmarks/train_step.py --device cuda --amp "$amp" --channels-last --only dg --iters 10 --warmup 3 \
      --case resnet50:3:224:96 > "$out/train_step_$amp.json"
done
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  torchrun --standalone --nproc-per-node 2 -m qdg_deploy.cli train --method qtdog --arch mnist-cnn --test-env 75 \
      --steps 20 --q-steps 5 --checkpoint-freq 10 --batch-size 16 --device cuda --out "$out/ddp" --overwrite \
      > "$out/ddp.log" 2>&1
fi
cat "$out"/train_step_*.json
