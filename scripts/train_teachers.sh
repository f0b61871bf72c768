#!/usr/bin/env bash
# Train the FER2013 teachers of the distilled model, write their averaged soft labels, then train the student
# on them. Every run resumes where it stopped (runs/<teachers|students>/<name>/last.keras + progress.json), so
# the script can be started again after an interruption and picks up the unfinished run. A finished run
# (final.keras) is reused. Teachers are selected on PublicTest only; PrivateTest is only reported.
# runs/ is not committed: `--checkpoint` copies each unfinished run's resume point (last.keras with the
# optimizer state, best.keras, progress.json, history.csv, snaps/) to models/<teachers|students>/ckpt/<name>/,
# which is committed, and a later run on a fresh clone starts from there. A finished run is kept as its
# predictions (models/<teachers|students>/preds/<name>.npz, written by `ensemble --predictions`) where they are
# written, else as its final weights without the optimizer's state.
#   scripts/train_teachers.sh [DATA]        (DATA: the FER2013 folder, default ../shared/data/fer2013)
#   scripts/train_teachers.sh --checkpoint [NAME...]  (save the resume points for a commit: every run's, or
#                                                     only those named)
set -euo pipefail
cd "$(dirname "$0")/.."
files=(final.keras last.keras best.keras progress.json history.csv)
py=${PYTHON:-.venv/bin/python}
# weights_only SRC DST: a .keras without its optimizer's state (a third of the size)
weights_only() {
  "$py" -c 'import sys, keras; keras.models.load_model(sys.argv[1], compile=False).save(sys.argv[2])' "$1" "$2"
}
if [[ ${1:-} == --checkpoint ]]; then
  shift
  for run in runs/teachers/*/ runs/students/*/; do
    [[ -f $run/progress.json ]] || continue
    name=$(basename "$run")
    [[ $# -eq 0 || " $* " == *" $name "* ]] || continue
    group=$(basename "$(dirname "$run")")
    ckpt=models/$group/ckpt
    rm -rf "${ckpt:?}/$name"
    if [[ -f $run/final.keras && -f models/$group/preds/$name.npz ]]; then
      echo "checkpoint $name: finished, its predictions (models/$group/preds/$name.npz) stand for it" >&2
      continue
    fi
    mkdir -p "$ckpt/$name"
    if [[ -f $run/final.keras ]]; then  # finished: its weights suffice
      for f in progress.json history.csv; do cp "$run/$f" "$ckpt/$name/"; done
      weights_only "$run/final.keras" "$ckpt/$name/final.keras"
      echo "checkpoint $name: finished, its weights" >&2
      continue
    fi
    for f in "${files[@]}"; do [[ -f $run/$f ]] && cp "$run/$f" "$ckpt/$name/"; done
    [[ -d $run/snaps ]] && cp -r "$run/snaps" "$ckpt/$name/"  # a soup's ingredients so far
    # best = last (the newest epoch was the best so far): commit the file once, restored as both
    last_val=$(tail -n 1 "$run/history.csv" | awk -F, '{print $(NF-1)}')
    if [[ -f $ckpt/$name/best.keras ]] && grep -q "\"best_val_accuracy\": $last_val}" "$run/progress.json"; then
      rm "$ckpt/$name/best.keras"
    elif [[ -f $ckpt/$name/best.keras ]]; then
      # the best epoch's weights only: its optimizer state (2/3 of the file) is never resumed from
      weights_only "$run/best.keras" "$ckpt/$name/best.keras"
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
# resumable GROUP NAME ARGS...: train runs/GROUP/NAME with `python -m training ARGS`, resuming from runs/ or
# from the committed checkpoint models/GROUP/ckpt/NAME/; nothing to do where it has finished.
resumable() {
  local group=$1 name=$2
  shift 2
  local run=runs/$group/$name ckpt=models/$group/ckpt/$name
  if [[ ! -f $run/progress.json && -f $ckpt/progress.json ]]; then
    mkdir -p "$run"
    for f in "${files[@]}"; do [[ -f $ckpt/$f ]] && cp "$ckpt/$f" "$run/"; done
    [[ -d $ckpt/snaps ]] && cp -r "$ckpt/snaps" "$run/"
    if [[ -f $ckpt/last.keras && ! -f $ckpt/best.keras ]]; then
      cp "$ckpt/last.keras" "$run/best.keras"
    fi
    echo "$name: resuming from the committed checkpoint ($(cat "$ckpt/progress.json"))" >&2
  fi
  if [[ -f $run/final.keras ]]; then
    echo "$name: done ($(cat "$run/progress.json"))" >&2
    return
  fi
  if [[ -f models/$group/preds/$name.npz && ! -d $run ]]; then
    echo "$name: done (its predictions are kept in models/$group/preds/$name.npz)" >&2
    return
  fi
  "$py" -m training --out "$run" "$@"
}
teacher() {
  names+=("$1")
  resumable teachers "$@"
}
# cycle NAME INIT SEED SOUP: a 26-epoch KD cycle of the student INIT (runs/students/NAME, seed SEED, lr 1e-3, the
# committed soft labels, each epoch's weights from epoch 20 on kept), then the greedy soup of its best epoch, INIT
# and its epochs 26, 24 and 22 (`soup`: chosen on PublicTest), runs/students/SOUP.keras, the next cycle's INIT.
# Where models/students/ckpt/SOUP.keras is committed it stands for the cycle and its soup (its run's weights
# are not committed; its predictions are, in models/students/preds/).
cycle() {
  local name=$1 init=$2 seed=$3 soup=runs/students/$4.keras kept=models/students/ckpt/$4.keras
  local run=runs/students/$1
  if [[ -f $kept ]]; then
    mkdir -p runs/students
    [[ -f $soup ]] || cp "$kept" "$soup"
    echo "$name: done (its soup is kept in $kept)" >&2
    return
  fi
  resumable students "$name" "${base[@]}" --init "$init" --keep-head --lr 1e-3 --epochs 26 --seed "$seed" \
    --mix mixup --mix-alpha 0.2 --distill models/teachers/fer2013_soft.npz --snapshots-from 20
  [[ -f $soup ]] || "$py" -m training soup "$run/final.keras" "$init" "$run/snaps/ep26.keras" \
    "$run/snaps/ep24.keras" "$run/snaps/ep22.keras" --source fer --data "$data" --out "$soup"
}
# shipped_model REV FILE TEACHER: models/fer2013_emonet.keras as of commit REV -> FILE, the --init of TEACHER
# (only while TEACHER still needs training: its kept predictions stand for it once done)
shipped_model() {
  if [[ ! -f models/teachers/preds/$3.npz && ! -f $2 ]]; then
    mkdir -p "$(dirname "$2")" && git show "$1:models/fer2013_emonet.keras" > "$2"
  fi
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
shipped_model 327ff45 runs/teachers/soup1.keras t9-cycle3-s88
teacher t9-cycle3-s88 "${base[@]}" --init runs/teachers/soup1.keras --keep-head --lr 1e-3 --epochs 35 --seed 88 \
  --mix mixup --mix-alpha 0.2
teacher t10-long-s99 "${base[@]}" --seed 99 --mix mixup --mix-alpha 0.2 --lr 2e-3 --epochs 90
# t12: a 26-epoch cycle of t10 (2026-12-02, 55 min here). t10's weights are not committed (its predictions
# stand for it), so on a fresh clone t12 counts through its kept predictions; to train it again, train t10 first.
teacher t12-c10-s101 "${base[@]}" --init runs/teachers/t10-long-s99/final.keras --keep-head --lr 1e-3 --epochs 26 \
  --seed 101 --mix mixup --mix-alpha 0.2 --snapshots-from 20
# t14: a 26-epoch cycle of the second soup (models/fer2013_emonet.keras of commit c3af968), for a third soup
shipped_model c3af968 runs/teachers/soup2.keras t14-cycle4-s141
teacher t14-cycle4-s141 "${base[@]}" --init runs/teachers/soup2.keras --keep-head --lr 1e-3 --epochs 26 --seed 141 \
  --mix mixup --mix-alpha 0.2 --snapshots-from 20
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
# The student: the shipped model's architecture from scratch on those soft labels (s1 on those of t9 + t10,
# fer2013_soft.npz of commit 7663476), t10's schedule (90 epochs, over two sessions), each epoch's weights from epoch 82 on kept
# for a soup. Then `soup`, `export` and `calibrate` as in models/README.md.
resumable students s1-scratch-kd "${base[@]}" --seed 131 --mix mixup --mix-alpha 0.2 --lr 2e-3 --epochs 90 \
  --distill models/teachers/fer2013_soft.npz --snapshots-from 82
# s2: a 26-epoch cycle of s1 on the soft labels of seven teachers (fer2013_soft.npz of commit 2430bc9), each
# epoch's weights from epoch 20 on kept, to soup with s1 (as t9 was with the first soup). Finished; its weights
# are committed (models/students/ckpt/s2-cycle-s1/final.keras), so s1's are needed only to train it again.
resumable students s2-cycle-s1 "${base[@]}" --init runs/students/s1-scratch-kd/final.keras --keep-head --lr 1e-3 \
  --epochs 26 --seed 171 --mix mixup --mix-alpha 0.2 --distill models/teachers/fer2013_soft.npz --snapshots-from 20
# s3-s5: cycles of the student lineage (`cycle` above). s3 starts from the soup of s2 and s1 (`soup` of the two:
# both kept); s1's weights are not committed, so that soup is made only while s3 has neither finished nor a
# committed checkpoint (a resume needs no --init) nor its own soup committed.
s3=runs/students/s3-cycle-soup12
if [[ ! -f models/students/ckpt/soup-s3.keras && ! -f $s3/progress.json \
  && ! -f models/students/ckpt/s3-cycle-soup12/progress.json && ! -f runs/students/soup-s12.keras ]]; then
  "$py" -m training soup runs/students/s2-cycle-s1/final.keras runs/students/s1-scratch-kd/final.keras --source fer \
    --data "$data" --out runs/students/soup-s12.keras
fi
cycle s3-cycle-soup12 runs/students/soup-s12.keras 181 soup-s3  # the soup: its best epoch (20) with epoch 26
cycle s4-cycle-soup3 runs/students/soup-s3.keras 191 soup-s4  # over two sessions; the soup: best epoch with 22
# s5-hard: 3 epochs of s5 on the hard labels (no teachers; lr 2e-4, mixup 0.2, seed 221): the cycles' soft labels
# leave the students under-confident; a short run on the labels lifts their accuracy (models/README.md).
# Its weights are committed (models/students/ckpt/s5-hard.keras, without the optimizer's state) and stand for
# s5 too (whose soup is soup-s4 alone: s5 adds nothing there).
if [[ ! -f models/students/ckpt/s5-hard.keras ]]; then
  cycle s5-cycle-soup4 runs/students/soup-s4.keras 211 soup-s5
  resumable students s5-hard "${base[@]}" --init runs/students/s5-cycle-soup4/final.keras --keep-head --lr 2e-4 \
    --epochs 3 --seed 221 --mix mixup --mix-alpha 0.2
fi
