#!/usr/bin/env bash
# Retrain the whole bundled demo chain from scratch with presto's own recipes (recipes/demo/), then
# bundle the inference artefacts as fp16 into presto_cli/assets/. Every stage resumes where it
# stopped if the script is run again. On 2 CPU cores the chain takes a few hours; on a GPU, minutes.
#   OUT=runs/demo DATA=data/synth N=2400 bash benchmarks/train_demo_models.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo}
DATA=${DATA:-data/synth}
N=${N:-2400}
DEVICE=${DEVICE:-auto}
P="python -m presto_cli"
dev="train.device=$DEVICE"

if [ ! -f "$DATA/manifest.jsonl" ]; then
  $P data synth --out "$DATA" --n "$N" --seconds 4 --seed 0 --split-heldout 0.1
fi
stage() {  # stage CMD RECIPE NAME [overrides...]
  local cmd=$1 recipe=$2 name=$3; shift 3
  if [ -f "$OUT/$name/model.safetensors" ]; then echo "== $name: done"; return; fi
  echo "== $name"
  $P "$cmd" "$recipe" "data.path=$DATA" "$dev" "$@" --out "$OUT/$name" --resume
}
# The codec: the bundled one (presto_cli/assets/demo-codec.safetensors, the bass-band codec of
# recipes/demo/autoencoder-bass.yaml, its held-out numbers in README) unless RETRAIN_CODEC=1 (about an
# hour on one CPU thread). The bundled chain's teacher phases up to teacher-tp were trained on the
# codec before it (recipes/demo/autoencoder.yaml, in git history as demo-codec.safetensors before the
# chain moved); run from scratch, this script trains them on the bass-band codec too.
if [ "${RETRAIN_CODEC:-0}" = "1" ] || [ ! -f presto_cli/assets/demo-codec.safetensors ]; then
  stage pretrain       recipes/demo/autoencoder-bass.yaml autoencoder
else
  mkdir -p "$OUT/autoencoder"
  [ -f "$OUT/autoencoder/model.safetensors" ] || cp presto_cli/assets/demo-codec.safetensors "$OUT/autoencoder/model.safetensors"
fi
stage pretrain       recipes/demo/clap.yaml        clap
stage pretrain       recipes/demo/teacher.yaml     teacher   "data.codec=$OUT/autoencoder/model.safetensors"
# three more teacher phases with the training noise moved up (METHOD.md section 2); the Presto-S and
# Presto-LS phases below first distil the last of them (teacher-shift3)
stage pretrain       recipes/demo/teacher-shift1.yaml teacher-shift1 "data.codec=$OUT/autoencoder/model.safetensors" "init=$OUT/teacher/model.safetensors"
stage pretrain       recipes/demo/teacher-shift2.yaml teacher-shift2 "data.codec=$OUT/autoencoder/model.safetensors" "init=$OUT/teacher-shift1/model.safetensors"
stage pretrain       recipes/demo/teacher-shift3.yaml teacher-shift3 "data.codec=$OUT/autoencoder/model.safetensors" "init=$OUT/teacher-shift2/model.safetensors"
# the 2-D output head (run twice), the tempo/key conditions on top, then the beat phase (METHOD.md
# section 2): the last, teacher-tp, is the teacher every model of the final chain distils and
# bundle.py bundles as demo-teacher
stage pretrain       recipes/demo/teacher-head2d.yaml teacher-head2d "data.codec=$OUT/autoencoder/model.safetensors" "init=$OUT/teacher-shift3/model.safetensors"
stage pretrain       recipes/demo/teacher-head2d.yaml teacher-head2d2 "data.codec=$OUT/autoencoder/model.safetensors" "init=$OUT/teacher-head2d/model.safetensors"
stage pretrain       recipes/demo/teacher-tempo-key.yaml teacher-tk "data.codec=$OUT/autoencoder/model.safetensors" "init=$OUT/teacher-head2d2/model.safetensors"
stage pretrain       recipes/demo/teacher-tempo-phase.yaml teacher-tp "data.codec=$OUT/autoencoder/model.safetensors" "init=$OUT/teacher-tk/model.safetensors"
reuse_pairs() {  # reuse_pairs FROM TO: a later phase reuses an earlier run's teacher trajectories
  mkdir -p "$OUT/$2"
  [ -f "$OUT/$2/reg_pairs.safetensors" ] || cp "$OUT/$1/reg_pairs.safetensors" "$OUT/$2/" 2>/dev/null || true
}
# the step-distilled generators are first distilled from teacher-shift3 (their phases below), then
# continued onto teacher-tk (presto-s-head, presto-ls-head) and then onto teacher-tp (presto-s-tp,
# presto-ls-tp)
T="data.teacher=$OUT/teacher-shift3/model.safetensors"
TK="data.teacher=$OUT/teacher-tk/model.safetensors"
TP="data.teacher=$OUT/teacher-tp/model.safetensors"
C="data.codec=$OUT/autoencoder/model.safetensors"
stage distill-steps  recipes/demo/presto-s.yaml    presto-s  "$T" "$C"
# second phase of Presto-S (regression onto teacher ODE trajectories)
stage distill-steps  recipes/demo/presto-s-regress.yaml presto-s-regress "$T" "$C" "distill.init=$OUT/presto-s/model.safetensors"
# third phase: DMD + GAN back on, the regression kept as an anchor
stage distill-steps  recipes/demo/presto-s-dmd.yaml presto-s-dmd "$T" "$C" "distill.init=$OUT/presto-s-regress/model.safetensors"
# fourth phase, run twice (600 + 600 iterations): the same settings with DMD2's backward simulation as
# the generator's input (METHOD.md section 3); the second run starts from the first's export and is
# bundled as demo-s. Both reuse presto-s-dmd's 256 trajectories (same teacher, seed and settings).
reuse_pairs presto-s-dmd presto-s-bsim
reuse_pairs presto-s-dmd presto-s-bsim2
stage distill-steps  recipes/demo/presto-s-bsim.yaml presto-s-bsim "$T" "$C" "distill.init=$OUT/presto-s-dmd/model.safetensors"
stage distill-steps  recipes/demo/presto-s-bsim.yaml presto-s-bsim2 "$T" "$C" "distill.init=$OUT/presto-s-bsim/model.safetensors"
# the last Presto-S phase: onto teacher-tk (its 2-D head and tempo/key layers start from the teacher's)
stage distill-steps  recipes/demo/presto-s-head.yaml presto-s-head "$TK" "$C" "distill.init=$OUT/presto-s-bsim2/model.safetensors"
# and onto teacher-tp (its beat-phase map starts from the teacher's); bundled as demo-s
stage distill-steps  recipes/demo/presto-s-tp.yaml presto-s-tp "$TP" "$C" "distill.init=$OUT/presto-s-head/model.safetensors"
# the Presto-L that Presto-LS's first phases run (from teacher-shift3, the budget embedding as first measured)
stage distill-layers recipes/demo/presto-l.yaml    presto-l-shift3 "$T" "$C" "layers.budget_init=0" "layers.budget_lr_mult=1"
# ASE and Presto-L of the final chain: from teacher-tp
stage distill-layers recipes/demo/ase.yaml         ase       "$TP" "$C"
stage distill-layers recipes/demo/presto-l.yaml    presto-l  "$TP" "$C"
# Presto-L with the self-teacher term on guided outputs (issue 29 item 4): scored beside demo-l by
# results.py (FAD against latency, per-bin errors); not bundled
stage distill-layers recipes/demo/presto-l-cfg.yaml presto-l-cfg "$TP" "$C"
stage combine        recipes/demo/presto-ls.yaml   presto-ls "$T" "$C" "combine.layers=$OUT/presto-l-shift3/model.safetensors"
# second phase of the bundled Presto-LS (the same regression onto teacher ODE trajectories); its pairs
# are presto-s-regress's (same teacher, seed and settings), copied so they are not made twice
reuse_pairs presto-s-regress presto-ls-regress
stage combine        recipes/demo/presto-ls-regress.yaml presto-ls-regress "$T" "$C" "combine.layers=$OUT/presto-l-shift3/model.safetensors" "distill.init=$OUT/presto-ls/model.safetensors"
# third phase of Presto-LS (DMD + GAN back on, the regression kept as an anchor); its 256 trajectories
# are presto-s-dmd's (same teacher, seed and settings); bundled as demo-ls
reuse_pairs presto-s-dmd presto-ls-dmd
stage combine        recipes/demo/presto-ls-dmd.yaml presto-ls-dmd "$T" "$C" "combine.layers=$OUT/presto-l-shift3/model.safetensors" "distill.init=$OUT/presto-ls-regress/model.safetensors"
# the next Presto-LS phase, the same as presto-s-head's (its 256 trajectories reused), onto teacher-tk
# and the schedule of a Presto-L distilled from it
stage distill-layers recipes/demo/presto-l.yaml    presto-l-tk "$TK" "$C"
reuse_pairs presto-s-head presto-ls-head
stage combine        recipes/demo/presto-ls-head.yaml presto-ls-head "$TK" "$C" "combine.layers=$OUT/presto-l-tk/model.safetensors" "distill.init=$OUT/presto-ls-dmd/model.safetensors"
# the last, the same as presto-s-tp's (its trajectories reused), onto teacher-tp and the final
# Presto-L's schedule; bundled as demo-ls
reuse_pairs presto-s-tp presto-ls-tp
stage combine        recipes/demo/presto-ls-tp.yaml presto-ls-tp "$TP" "$C" "combine.layers=$OUT/presto-l/model.safetensors" "distill.init=$OUT/presto-ls-head/model.safetensors"
# demo-ls given demo-s's two backward-simulation phases (presto-ls-bsim.yaml twice, 2 x 600 iterations
# from presto-ls-tp, about 1 h on one thread; their 256 trajectories are presto-s-tp's: same teacher,
# seed and settings); the second run is bundled as demo-ls (METHOD.md section 3)
reuse_pairs presto-s-tp presto-ls-bsim
reuse_pairs presto-s-tp presto-ls-bsim2
stage combine        recipes/demo/presto-ls-bsim.yaml presto-ls-bsim "$TP" "$C" "combine.layers=$OUT/presto-l/model.safetensors" "distill.init=$OUT/presto-ls-tp/model.safetensors"
stage combine        recipes/demo/presto-ls-bsim.yaml presto-ls-bsim2 "$TP" "$C" "combine.layers=$OUT/presto-l/model.safetensors" "distill.init=$OUT/presto-ls-bsim/model.safetensors"
# The chain moved onto the bass-band codec (issue 30 item 4; recipes/demo/autoencoder-bass.yaml, bundled
# as demo-codec): the teacher fine-tuned onto its latents twice (teacher-bass, teacher-bass2); Presto-S
# continued onto them (presto-s-bass onto teacher-bass, then a regression phase and two DMD + GAN +
# anchor phases onto teacher-bass2), Presto-LS the same from presto-ls-bsim2 (its regression phase and
# two DMD phases); ASE and Presto-L distilled from teacher-bass2 from scratch. The last phase of each is
# bundled (METHOD.md section 3, "The chain moved onto the bass-band codec").
# its codec: the bundled one (the bass-band codec), or with RETRAIN_CODEC=1 the autoencoder-bass.yaml
# codec trained above. Not "$OUT/autoencoder" otherwise: in a run directory from before the chain
# moved, that is the codec without the bass band.
mkdir -p "$OUT/autoencoder-bass"
if [ ! -f "$OUT/autoencoder-bass/model.safetensors" ]; then
  if [ "${RETRAIN_CODEC:-0}" = "1" ]; then src="$OUT/autoencoder/model.safetensors"; else src=presto_cli/assets/demo-codec.safetensors; fi
  cp "$src" "$OUT/autoencoder-bass/model.safetensors"
fi
CB="data.codec=$OUT/autoencoder-bass/model.safetensors"
TB="data.teacher=$OUT/teacher-bass2/model.safetensors"
stage pretrain       recipes/demo/teacher-bass.yaml  teacher-bass  "$CB" "init=$OUT/teacher-tp/model.safetensors"
stage pretrain       recipes/demo/teacher-bass2.yaml teacher-bass2 "$CB" "init=$OUT/teacher-bass/model.safetensors"
stage distill-steps  recipes/demo/presto-s-bass.yaml  presto-s-bass  "data.teacher=$OUT/teacher-bass/model.safetensors" "$CB" "distill.init=$OUT/presto-s-tp/model.safetensors"
# presto-s-bass drew its keys at random: a regression phase onto teacher-bass2's trajectories (corpus
# captions with their keys) before the last DMD phase; Presto-LS gets the same two phases
stage distill-steps  recipes/demo/presto-s-bass-reg.yaml presto-s-bass-reg "$TB" "$CB" "distill.init=$OUT/presto-s-bass/model.safetensors"
stage distill-steps  recipes/demo/presto-s-bass2.yaml presto-s-bass2 "$TB" "$CB" "distill.init=$OUT/presto-s-bass-reg/model.safetensors"
stage distill-layers recipes/demo/ase.yaml           ase-bass      "$TB" "$CB"
stage distill-layers recipes/demo/presto-l.yaml      presto-l-bass "$TB" "$CB"
reuse_pairs presto-s-bass-reg presto-ls-bass-reg
stage combine        recipes/demo/presto-ls-bass-reg.yaml presto-ls-bass-reg "$TB" "$CB" "combine.layers=$OUT/presto-l-bass/model.safetensors" "distill.init=$OUT/presto-ls-bsim2/model.safetensors"
reuse_pairs presto-s-bass2 presto-ls-bass
stage combine        recipes/demo/presto-ls-bass.yaml presto-ls-bass "$TB" "$CB" "combine.layers=$OUT/presto-l-bass/model.safetensors" "distill.init=$OUT/presto-ls-bass-reg/model.safetensors"
# the last phase run again from its own export, for both (as presto-s-bsim2 was), on presto-s-bass2's trajectories
reuse_pairs presto-s-bass2 presto-s-bass3
reuse_pairs presto-s-bass2 presto-ls-bass2
stage distill-steps  recipes/demo/presto-s-bass3.yaml presto-s-bass3 "$TB" "$CB" "distill.init=$OUT/presto-s-bass2/model.safetensors"
stage combine        recipes/demo/presto-ls-bass2.yaml presto-ls-bass2 "$TB" "$CB" "combine.layers=$OUT/presto-l-bass/model.safetensors" "distill.init=$OUT/presto-ls-bass/model.safetensors"
python benchmarks/bundle.py --runs "$OUT" --data "$DATA"

# Presto-S as the paper trains it (issue 29; PAPER=0 skips it), scored by benchmarks/results.py
# ("Distillation recipes compared"), not bundled: DMD + GAN from teacher-tp, r = 5, no regression,
# 5200 iterations, about 3 h on one CPU thread
if [ "${PAPER:-1}" = "1" ]; then
  stage distill-steps  recipes/demo/presto-s-paper.yaml presto-s-paper "$TP" "$C"
fi


# The layer-method comparison scored by benchmarks/results.py (GRID=0 skips it): a 2x2 of the block
# choice {early exit, keep-last} x the self-teacher term {on, off}, all with the budget embedding,
# plus ASE, each distilled from teacher-bass2 GRID_SEEDS times (training seeds 0, 1, 2). With GRID_STEPS= (empty) every run
# has the recipes' steps and seed 0 of ASE and of keep-last + self-teacher (= Presto-L) are ase-bass and presto-l-bass
# above; GRID_STEPS=N (and GRID_BATCH=B) trains every cell N steps (batch B) instead: all 15 runs, so
# the cells stay comparable. Default: the recipes' 300 steps at batch 32 (warm-up finished; 9-15 min
# per run on one thread, the 13 new runs about 80 min on two cores).
GRID_STEPS=${GRID_STEPS-}  # the published grid: the recipes' length (GRID_STEPS=50 GRID_BATCH=16: the old short grid)
GRID_BATCH=${GRID_BATCH-}
if [ "${GRID:-1}" = "1" ]; then
  for seed in $(seq 0 $(( ${GRID_SEEDS:-3} - 1 ))); do
    for cell in ase early-exit-no-st early-exit-st keep-last-no-st keep-last-st; do
      d="grid/$cell/seed$seed"
      if [ -z "${GRID_STEPS:-}" ] && [ "$seed" = 0 ] && { [ "$cell" = ase ] || [ "$cell" = keep-last-st ]; }; then
        main=$([ "$cell" = ase ] && echo ase-bass || echo presto-l-bass)
        mkdir -p "$OUT/grid/$cell"
        [ -e "$OUT/$d" ] || ln -s "../../$main" "$OUT/$d"
        continue
      fi
      args=("$TB" "$CB" "seed=$seed")
      [ -n "${GRID_STEPS:-}" ] && args+=("train.steps=$GRID_STEPS")
      [ -n "${GRID_BATCH:-}" ] && args+=("train.batch_size=$GRID_BATCH")
      if [ "$cell" = ase ]; then
        stage distill-layers recipes/demo/ase.yaml "$d" "${args[@]}"
      else
        kl=$([[ $cell == keep-last-* ]] && echo 1 || echo 0)
        st=$([[ $cell == *-no-st ]] && echo 0 || echo 1)
        stage distill-layers recipes/demo/presto-l.yaml "$d" "${args[@]}" "layers.keep_last=$kl" "layers.self_teacher=$st"
      fi
    done
  done
fi
