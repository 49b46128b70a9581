#!/usr/bin/env bash
# .ci/gpu-check's own dry run, on the emulated module: the bundle made from this build, then
# every step of `gpu-check run` (GPU_CHECK_QUICK=1: small sizes, one repetition, tiny models
# in place of the synthetic 1.7B and 8B shapes). Every library the bundle's binaries load must
# come from the bundle or be one a GPU machine's system has (the C and C++ runtimes). A GPU
# machine is lent for minutes at a time; a broken option or a missing file in the script must
# show up here, not there.
#   gpu_check_dry.sh SCRIPT BUILD_ROOT EMULATED_MODULE MODEL
set -u
script=$1 build=$2 module=$3 model=$4
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "gpu_check_dry: $*" >&2; cat "$dir/out/summary.txt" >&2 2>/dev/null; exit 1; }

BUILD=$build MODULE=$module "$script" bundle "$dir/bundle" || fail "bundle failed"
for f in bonsai test_cuda libbonsai-cuda.so; do
    LD_LIBRARY_PATH=$dir/bundle/lib ldd "$dir/bundle/$f" | awk '/=>/ {print $1, $3}' |
        grep -Ev "^(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s)\.so[.0-9]* |^[^ ]+ $dir/bundle/lib/" |
        grep . && fail "$f loads the libraries above from outside the bundle"
done
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
# a machine where the module finds no driver: the script says what its binaries load and stops
CUDA_EMU_DRIVER=none GPU_CHECK_QUICK=1 MODELS=$dir/models bash "$dir/bundle/gpu-check" run \
    "$dir/out-none" >"$dir/log-none" 2>&1
rc=$?
sum=$dir/out-none/summary.txt
[ $rc = 1 ] || { cat "$dir/log-none" >&2; fail "gpu-check run without a driver: exit $rc, not 1"; }
grep -q '^cuda .*no NVIDIA driver' "$sum" || fail "no reason for the unusable backend"
grep -q "^==== the cuda backend is not usable here" "$sum" || fail "no diagnostics without a driver"
grep -q "libbonsai-cuda.so:$" "$sum" || fail "the module's libraries were not listed"
grep -q "^==== done: rc 1" "$sum" || fail "no final line without a driver"
! grep -q "^==== bench" "$sum" || fail "benches ran without a driver"
echo "gpu-check dry run: $benches benches on the emulated module, test_cuda passed"
