#!/usr/bin/env bash
# The shipped model, from nothing: corpus, tokenizer, training, evaluation, and the copy into
# models/kjv/model/. Run from the repository root after building (build/bin/mamba2).
# Resumable: run it again after an interruption and training continues from the last checkpoint.
set -euo pipefail
mamba2=build/bin/mamba2
models/kjv/prepare.sh build/kjv-data
mkdir -p build/kjv-run
[ -f build/kjv-run/tokenizer.json ] ||
  $mamba2 train-tokenizer --input build/kjv-data/train --vocab-size 4096 --out build/kjv-run/tokenizer.json
if [ -f build/kjv-run/latest ]; then
  OMP_WAIT_POLICY=passive $mamba2 train --config models/kjv/recipe.json --resume
else
  OMP_WAIT_POLICY=passive $mamba2 train --config models/kjv/recipe.json
fi
cat build/kjv-data/val/*.txt > models/kjv/val.txt
# The checkpoint with the lowest validation loss (keep_best), not necessarily the last one.
$mamba2 eval --model build/kjv-run/best --text models/kjv/val.txt
mkdir -p models/kjv/model
cp build/kjv-run/best/config.json build/kjv-run/best/model.safetensors build/kjv-run/best/tokenizer.json models/kjv/model/
