#!/usr/bin/env bash
# The ThreadSanitizer build of test_cuda_emu must report a race it is shown: `race` runs a kernel
# whose threads read what their neighbours write with no barrier between (swap_neighbours). Passes
# when TSan's exit status (66) and its report, naming that kernel, both come out.
out=$("$1" race 2>&1)
rc=$?
if [ "$rc" = 66 ] && grep -q "WARNING: ThreadSanitizer: data race" <<<"$out" &&
    grep -q "swap_neighbours" <<<"$out"; then
    echo "the race in swap_neighbours was reported"
    exit 0
fi
printf '%s\n' "$out" | tail -40
echo "test_cuda_emu_tsan race: exit $rc, not the race report expected" >&2
exit 1
