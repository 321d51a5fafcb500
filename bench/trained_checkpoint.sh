#!/usr/bin/env bash
# A *trained* full-size InternVL2-2B for the evaluation's agreement bar (issue 22), through the user's pipeline on
# one GPU: a random-weight InternVL2-2B with OpenGVLab's modeling files (bench/eval_throughput.py --make-model),
# synthetic FoodieQA (tools/make_demo_data.py, 160 photos) -> tools/process_food.py -> tools/train.py with the
# shipped 2B config under ZeRO-2 (3 epochs, 192 iterations; lr 2e-4 instead of 4e-5 so a random model's answers
# become decisive) -> tools/convert_to_official.py -> bench/eval_throughput.py: LMDeploy against transformers on
# the 13-tile set, bfloat16 and float16. A random model's near-tied logits make greedy answers flip on rounding;
# a trained one's do not, which is what the bar is about. About 7 minutes on one H200 (2026-12-01: 418 s).
#
#   source bench/gpu_env.sh && bash bench/trained_checkpoint.sh OUT_DIR
set -uo pipefail
out=${1:?output folder}; mkdir -p "$out"
w=${WORK:-/tmp/foodie-trained}; mkdir -p "$w"
t0=$(date +%s); stage() { echo "## $(( $(date +%s) - t0 )) s: $*"; }
stage "model"
python3 -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; import eval_throughput as e; e.make_model(Path('$w/base'))" || exit 1
stage "data"
python3 tools/make_demo_data.py --out "$w/photos" --photos-per-dish 10 --no-textqa --mivqa-per-dish 1 || exit 1
python3 tools/process_food.py --data-root "$w/photos" --out "$w/xtuner" || exit 1
stage "train"
export FOODIE_MODEL=$w/base FOODIE_DATA=$w/xtuner FOODIE_WORK_DIR=$w/train
config=xtuner_configs/internvl_v2_internlm2_2b_lora_finetune_food.py
python3 tools/train.py --config $config --deepspeed deepspeed_zero2 -- --cfg-options optim_wrapper.optimizer.lr=${LR:-2e-4} \
  > "$out/train.log" 2>&1 || { tail -20 "$out/train.log"; exit 1; }
grep -E "Iter\(train\)" "$out/train.log" | awk 'NR % 4 == 1' | grep -oE "Iter\(train\) *\[ *[0-9]+/[0-9]+\]|loss: [0-9.]+" | paste - -
stage "merge"
python3 tools/convert_to_official.py $config latest "$w/merged" --base-model "$w/base" > "$out/convert.log" 2>&1 \
  || { tail -20 "$out/convert.log"; exit 1; }
grep "^\[verify\] max\|^\[convert\] wrote" "$out/convert.log"
stage "agreement"
python3 bench/eval_throughput.py --model "$w/merged" --make-data "$w/photos13" --questions 128 --compare-questions 128 \
  --ttft-runs 0 --variant-timeout 200 --out "$out/agreement.json" \
  --variants "lmdeploy:engine=0,transformers,lmdeploy:dtype=16:engine=0,transformers:dtype=16"
stage "done"
