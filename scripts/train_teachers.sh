#!/usr/bin/env bash
# Train the FER2013 teachers of the distilled model, then write their averaged soft labels.
# Every run resumes where it stopped (runs/teachers/<name>/last.keras + progress.json), so the script can
# be started again after an interruption and picks up the unfinished teacher. A finished teacher
# (final.keras) is reused. Teachers are selected on PublicTest only; PrivateTest is only reported.
# runs/ is not committed: `--checkpoint` copies each unfinished teacher's resume point (last.keras with the
# optimizer state, best.keras, progress.json, history.csv) to models/teachers/ckpt/<name>/, which is
# committed, and a later run on a fresh clone starts from there. A finished teacher is kept as its
# predictions (models/teachers/preds/<name>.npz, written by the ensemble step), not its weights.
#   scripts/train_teachers.sh [DATA]        (DATA: the FER2013 folder, default ../shared/data/fer2013)
#   scripts/train_teachers.sh --checkpoint  (save the resume points for a commit)
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=models/teachers/ckpt
files=(final.keras last.keras best.keras progress.json history.csv)
py=${PYTHON:-.venv/bin/python}
if [[ ${1:-} == --checkpoint ]]; then
  for run in runs/teachers/*/; do
    name=$(basename "$run")
    [[ -f $run/progress.json ]] || continue
    rm -rf "${ckpt:?}/$name"
    if [[ -f $run/final.keras && -f models/teachers/preds/$name.npz ]]; then
      echo "checkpoint $name: finished, its predictions (models/teachers/preds/$name.npz) stand for it" >&2
      continue
    fi
    mkdir -p "$ckpt/$name"
    keep=("${files[@]}")
    [[ -f $run/final.keras ]] && keep=(final.keras progress.json history.csv)  # finished: the weights suffice
    for f in "${keep[@]}"; do [[ -f $run/$f ]] && cp "$run/$f" "$ckpt/$name/"; done
    # best = last (the newest epoch was the best so far): commit the file once, restored as both
    last_val=$(tail -n 1 "$run/history.csv" | awk -F, '{print $(NF-1)}')
    if [[ -f $ckpt/$name/best.keras ]] && grep -q "\"best_val_accuracy\": $last_val}" "$run/progress.json"; then
      rm "$ckpt/$name/best.keras"
    elif [[ -f $ckpt/$name/best.keras ]]; then
      # the best epoch's weights only: its optimizer state (2/3 of the file) is never resumed from
      "$py" -c 'import sys, keras; keras.models.load_model(sys.argv[1], compile=False).save(sys.argv[2])' \
        "$run/best.keras" "$ckpt/$name/best.keras"
    fi
    echo "checkpoint $name: $(cat "$run/progress.json")" >&2
  done
  exit 0
fi
data="${1:-../shared/data/fer2013}"
base=(--source fer --data "$data" --model emonet --no-export)
# t1-t3 continue the shipped model (6 epochs each): they turned out too alike to gain as an ensemble
# (ensemble of the three: PrivateTest 68.74 %, below t1 alone), so t4 on is trained from scratch.
# (They were made from models/fer2013_emonet.keras of commit 5b1d273; the file is the model soup since.)
common=("${base[@]}" --init models/fer2013_emonet.keras --keep-head --lr 5e-4 --epochs "${TEACHER_EPOCHS:-6}")
names=()  # every teacher, in order: the ensemble below takes them all
teacher() {
  local name=$1
  shift
  names+=("$name")
  if [[ ! -f runs/teachers/$name/progress.json && -f $ckpt/$name/progress.json ]]; then
    mkdir -p "runs/teachers/$name"
    for f in "${files[@]}"; do [[ -f $ckpt/$name/$f ]] && cp "$ckpt/$name/$f" "runs/teachers/$name/"; done
    if [[ -f $ckpt/$name/last.keras && ! -f $ckpt/$name/best.keras ]]; then
      cp "$ckpt/$name/last.keras" "runs/teachers/$name/best.keras"
    fi
    echo "teacher $name: resuming from the committed checkpoint ($(cat "$ckpt/$name/progress.json"))" >&2
  fi
  if [[ -f runs/teachers/$name/final.keras ]]; then
    echo "teacher $name: done ($(cat runs/teachers/"$name"/progress.json))" >&2
    return
  fi
  if [[ -f models/teachers/preds/$name.npz && ! -d runs/teachers/$name ]]; then
    echo "teacher $name: done (its predictions are kept in models/teachers/preds/$name.npz)" >&2
    return
  fi
  "$py" -m training --out "runs/teachers/$name" "$@"
}
teacher t1-mixup "${common[@]}" --seed 11 --mix mixup --mix-alpha 0.3
teacher t2-cutmix "${common[@]}" --seed 22 --mix cutmix --mix-alpha 1.0
teacher t3-ferplus "${common[@]}" --seed 33 --ferplus-blend 0.5
teacher t4-scratch "${base[@]}" --seed 44 --mix mixup --mix-alpha 0.2 --lr 2e-3 --epochs 40
teacher t5-scratch-cutmix "${base[@]}" --seed 55 --mix cutmix --mix-alpha 1.0 --lr 2e-3 --epochs 40
# t6, t7: t4's recipe with other seeds (2026-12-01; run side by side, about 2 h 15 min on two cores)
teacher t6-scratch-s66 "${base[@]}" --seed 66 --mix mixup --mix-alpha 0.2 --lr 2e-3 --epochs 40
teacher t7-scratch-s77 "${base[@]}" --seed 77 --mix mixup --mix-alpha 0.2 --lr 2e-3 --epochs 40
# t9: a third cycle of the first soup (models/fer2013_emonet.keras of commit 327ff45; with it, the second soup)
# t10: t4's recipe on a 90-epoch schedule, over two sessions (resumed from models/teachers/ckpt/, 2026-12-01)
if [[ ! -f models/teachers/preds/t9-cycle3-s88.npz && ! -f runs/teachers/soup1.keras ]]; then
  mkdir -p runs/teachers && git show 327ff45:models/fer2013_emonet.keras > runs/teachers/soup1.keras
fi
teacher t9-cycle3-s88 "${base[@]}" --init runs/teachers/soup1.keras --keep-head --lr 1e-3 --epochs 35 --seed 88 \
  --mix mixup --mix-alpha 0.2
teacher t10-long-s99 "${base[@]}" --seed 99 --mix mixup --mix-alpha 0.2 --lr 2e-3 --epochs 90
# Each teacher's predictions are kept in models/teachers/preds/ (float16, committed): a teacher of an earlier
# session counts through its .npz even when its weights are gone. The model shipped before the student
# (models/fer2013_emonet.keras at commit e13e793) is teacher t0.
# --select: the mean over the teachers greedy forward selection picks on PublicTest.
teachers=(models/teachers/preds/t0-emonet-c2.npz)  # the shipped model up to this ensemble (commit e13e793)
# t8-soup: the model soup shipped on 2026-12-01 (models/fer2013_emonet.keras of commit cf68a79), kept as its
# predictions: git show cf68a79:models/fer2013_emonet.keras > runs/teachers/t8-soup/final.keras
teachers+=(models/teachers/preds/t8-soup.npz)
# t11-soup2: the second soup, shipped from 2026-12-01 evening (models/fer2013_emonet.keras of commit c3af968), the
# same way: git show c3af968:models/fer2013_emonet.keras > runs/teachers/t11-soup2/final.keras
teachers+=(models/teachers/preds/t11-soup2.npz)
for name in "${names[@]}"; do
  if [[ -f runs/teachers/$name/final.keras ]]; then
    teachers+=("runs/teachers/$name/final.keras")
  elif [[ -f models/teachers/preds/$name.npz ]]; then
    teachers+=("models/teachers/preds/$name.npz")
  fi
done
"$py" -m training ensemble "${teachers[@]}" --data "$data" --predictions models/teachers/preds --select \
  --out models/teachers/fer2013_soft.npz
