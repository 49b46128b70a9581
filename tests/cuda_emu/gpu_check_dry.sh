#!/usr/bin/env bash
# .ci/gpu-check's own dry run, on the emulated module: the bundle made from this build, then
# every step of `gpu-check run` (GPU_CHECK_QUICK=1: small sizes, one repetition, tiny models
# in place of the synthetic 1.7B and 8B shapes). It cannot tell a library missing from the
# bundle: the build's binaries find theirs here anyway. A GPU machine is lent for minutes at a
# time; a broken option or a missing file in the script must show up here, not there.
#   gpu_check_dry.sh SCRIPT BUILD_ROOT EMULATED_MODULE MODEL
set -u
script=$1 build=$2 module=$3 model=$4
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "gpu_check_dry: $*" >&2; cat "$dir/out/summary.txt" >&2 2>/dev/null; exit 1; }

BUILD=$build MODULE=$module "$script" bundle "$dir/bundle" || fail "bundle failed"
mkdir -p "$dir/models" # the script makes its two models there (tiny ones, with 4,096 token ids)
GPU_CHECK_QUICK=1 MODELS=$dir/models BONSAI_TEST_CUDA_EMU=1 BONSAI_TEST_FILTER=test_models \
    BONSAI_TEST_QWEN3_TINY_4K=$model bash "$dir/bundle/gpu-check" run "$dir/out" >"$dir/log" 2>&1
rc=$?
sum=$dir/out/summary.txt
[ $rc = 0 ] || { cat "$dir/log" >&2; fail "gpu-check run: exit $rc"; }
grep -q '^test_cuda: exit 0$' "$sum" || fail "test_cuda did not pass"
grep -q '^test_wgmma: exit 0$' "$sum" || fail "test_wgmma did not pass"
grep -q 'PASSED' "$dir/out/test_cuda.txt" || fail "no test_cuda output"
[ "$(grep -c '^==== synthetic model' "$sum")" = 2 ] || fail "the script did not make its models"
benches=$(grep -c '^==== bench' "$sum")
on_cuda=$(grep -c '^backend:  cuda' "$sum")
[ "$benches" = 14 ] || fail "$benches benches, not 14"
[ "$on_cuda" = "$benches" ] || fail "$on_cuda of $benches benches on the cuda backend"
wgmma=$(grep -c '^backend:  cuda.*wgmma' "$sum")
[ "$wgmma" = 2 ] || fail "$wgmma benches on wgmma, not 2"
# a prompt for the main runs, the six prompt variants and the two on wgmma; generation for the
# main runs and the four decode variants, sessions for both models
for want in "^pp64 10" "^tg8 .* (median of 1; 6" "aggregate of 4 sessions 2" "of it$ 6"; do
    pattern=${want% *} count=${want##* }
    got=$(grep -c -- "$pattern" "$sum")
    [ "$got" = "$count" ] || fail "$got lines with '$pattern', not $count"
done
grep -q '^==== compute-sanitizer: not run (a dry run)' "$sum" || fail "compute-sanitizer was not left out"
grep -q '==== done: rc 0' "$sum" || fail "no final line"
echo "gpu-check dry run: $benches benches on the emulated module, test_cuda passed"
