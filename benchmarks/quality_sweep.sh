#!/usr/bin/env bash
# The exact runs behind benchmarks/results/quality.{json,md} and its plots.
# Each run is keyed (method, ratio, seed, epochs, samples) and skipped if already stored,
# so an interrupted sweep resumes; the commands may also run in parallel with separate
# --out directories, folded together by quality_merge.py. About 17 h of one core
# (the 60k x 20 runs are 4-11 min each).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
PY=${PYTHON:-.venv/bin/python}
Q="$PY benchmarks/quality.py --threads 1 --max-samples 20000 --out ${OUT:-benchmarks/results}"

# PSP step and scoring cost (60k samples)
$PY benchmarks/quality.py --psp-cost --threads 1 --out "${OUT:-benchmarks/results}"
# main comparison at r = 0.3
$Q --epochs 8 --ratios 0.3 --seeds 3
# two more seeds for the main contenders and the knobs that moved most
$Q --epochs 8 --ratios 0.3 --seeds 3,4 --methods uniform,dynams-psp-0.25,\
dynams-psp-0.25-global,dynams-psp-0.25-lam0.5,dynams-psp-0.25-bf0.5,uniform-psp-0.25,\
uniform-compute-matched,full
# ratio sweep
$Q --epochs 8 --ratios 0.1,0.2,0.5 --seeds 3 \
   --methods uniform,dynams-psp-0.25,uniform-compute-matched
# knob ablations against dynams-psp-0.25
$Q --epochs 8 --ratios 0.3 --seeds 3 --methods \
dynams-psp-0.25-lam0.5,dynams-psp-0.25-bf0.5,uniform-psp-0.25-lam0.5,dynams-psp-0.5,\
dynams-psp-0.25-int2,dynams-psp-0.25-warm0,dynams-psp-0.25-warm3,dynams-psp-0.25-signed,\
dynams-psp-0.25-global,dynams-psp-0.25-power,dynams-psp-0.25-int5,dynams-psp-0.25-pipe,\
dynams-psp-0.25-distill,uniform-psp-0.25-bf0.5
$Q --epochs 8 --ratios 0.3 --seeds 3 --methods dynams-psp-0.25-bf0.25
# training length: the gap to full data
$Q --epochs 10 --ratios 0.3 --seeds 3 --methods full,uniform,dynams-psp-0.25
$Q --epochs 20 --ratios 0.3 --seeds 1 --methods full,uniform,dynams-psp-0.25
$Q --epochs 40 --ratios 0.3 --seeds 1 --methods full,uniform,dynams-psp-0.25
# the three changed defaults together (global, half-batch PSP, pipelined)
$Q --epochs 8 --ratios 0.3 --seeds 5 --methods dynams-psp-0.25-global-bf0.5-pipe
# the default against global selection on all 60k training images
$PY benchmarks/quality.py --threads 1 --out "${OUT:-benchmarks/results}" --epochs 8 \
   --ratios 0.3 --seeds 1 --methods dynams-psp-0.25,dynams-psp-0.25-global
# the frontier: selection rules against uniform at several ratios, InfoBatch and full data
D=dynams-psp-0.25-global-bf0.5-pipe
$Q --epochs 8 --ratios 0.4,0.5 --seeds 5 --methods uniform
$Q --epochs 8 --seeds 5 --methods infobatch,full,dynams-full-proxy,static-margin
$Q --epochs 8 --ratios 0.3 --seeds 5 --methods \
$D-exp0.2,$D-exp0.4,$D-ccs50,$D-ann1,$D-exp0.2-ann1,$D-ev2
$Q --epochs 8 --ratios 0.5 --seeds 5 --methods $D-loss-exp0.4-ann1
# the same with 20 % of the training labels flipped (its own directory)
N="$PY benchmarks/quality.py --threads 1 --max-samples 20000 --label-noise 0.2"
N="$N --out ${OUT:-benchmarks/results}/label-noise-0.2"
$N --epochs 8 --ratios 0.3 --seeds 5 --methods uniform,full,infobatch,\
$D,$D-exp0.2,$D-ccs50,$D-ann1,$D-exp0.2-ann1
$N --epochs 8 --ratios 0.4 --seeds 5 --methods uniform
# the long regime: all 60k images, 20 epochs, 3 seeds
L="$PY benchmarks/quality.py --threads 1 --out ${OUT:-benchmarks/results} --epochs 20"
$L --ratios 0.3 --seeds 3 --methods full,uniform,infobatch,$D,$D-ann1
$L --ratios 0.4 --seeds 3 --methods uniform
# long training at the budgets people pick: uniform, the default, and the rules with an
# explore share (weighted or not), 60k x 20, 3 seeds; every run records its diagnostics
$L --ratios 0.3 --seeds 3 --methods $D,$D-exp0.5
$L --ratios 0.5,0.7 --seeds 3 --methods uniform,$D,$D-exp0.5-rwn
$L --ratios 0.5 --seeds 3 --methods $D-exp0.5-rw
$L --ratios 0.3 --seeds 0, --methods $D-exp0.5-rwn
$L --ratios 0.5 --seeds 0, --methods $D-exp0.5
$L --ratios 0.7 --seeds 0, --methods $D-exp0.5-rw
$Q --epochs 8 --ratios 0.3 --seeds 5 --methods $D-exp0.5
$Q --epochs 8 --ratios 0.3 --seeds 3 --methods $D-exp0.5-rw,$D-exp0.5-rwn
$N --epochs 8 --ratios 0.3 --seeds 5 --methods $D-exp0.5
$N --epochs 8 --ratios 0.5 --seeds 3 --methods uniform,$D,$D-exp0.5-rw
# a long-tailed variant: class sizes decaying geometrically to 1/50 (its own directory)
T="$PY benchmarks/quality.py --threads 1 --long-tail 50 --epochs 20"
T="$T --out ${OUT:-benchmarks/results}/long-tail-50"
$T --ratios 0.5 --seeds 3 --methods uniform,$D-exp0.5-rw
$T --ratios 0.3 --seeds 3 --methods uniform,$D-exp0.5
$T --ratios 0.7 --seeds 3 --methods uniform
# tables and plots (plots for the 8-epoch setting)
$Q --report --epochs 8
$N --report --epochs 8
$T --report
