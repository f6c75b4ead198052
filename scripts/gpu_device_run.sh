#!/usr/bin/env bash
# The device side of scripts/gpu_stage.sh, in one call: the shared run.sh (devices, selftest,
# bench, the PyTorch peer), the GPU test binaries, and for this build and every other staged
# one (.gpu/bin/signflow_*) its selftest and the kernel breakdown of attention, a training
# step and a prediction, then all of them in alternating rounds. Everything lands in $OUT
# (seven files at most: the tool returns eight).
#
#   bash .gpu/gpu_device_run.sh           all of the above
#   bash .gpu/gpu_device_run.sh --quick   no run.sh: the GPU tests, each build's selftest and
#                                         attention kernel breakdown, and alternating rounds of
#                                         the compute-bound cases: many builds in a short lease
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
quick=false
[ "${1:-}" = "--quick" ] && quick=true

if $quick; then
    # What run.sh does first: glvnd and the Vulkan loader from .gpu/debs.
    for f in .gpu/debs/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done
    ldconfig
else
    bash .gpu/run.sh
fi
# run.sh names the ICD in its own shell only.
for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
    /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
    [ -e "$icd" ] && { export VK_DRIVER_FILES=$icd; break; }
done

build_root=$(cat .gpu/tests/build_root)
if [ ! -e "$build_root" ]; then
    mkdir -p "$(dirname "$build_root")" && ln -s "$PWD" "$build_root"
fi
for t in gpu_parity model_parity; do
    (cd "$build_root" && timeout 150 .gpu/tests/$t --test-threads 4) >> "$OUT/tests.txt" 2>&1
    echo "test $t: exit $?"
done
grep -E "^test result|FAILED|panicked" "$OUT/tests.txt"

for gz in .gpu/bin/signflow_*.gz; do [ -e "$gz" ] && gunzip -f "$gz" && chmod +x "${gz%.gz}"; done
others=$(ls .gpu/bin/signflow_* 2>/dev/null)
# Every build's own check on this card, and where its GPU time goes.
for bin in .gpu/bin/signflow $others; do
    echo "== $bin"
    timeout 120 "$bin" selftest --device gpu 2>&1 | grep -E "checks|FAIL"
    cases=attention,train_step,predict
    $quick && cases=attention
    timeout 120 "$bin" bench --device gpu --kernel-times --filter $cases 2>&1 \
        | grep -v -E "INFO|^device|^op"
done > "$OUT/kernels.txt"
cat "$OUT/kernels.txt"

filter=()
$quick && filter=(--filter matmul,attention,train_step,predict)
if [ -n "$others" ]; then
    for round in 1 2; do
        for bin in .gpu/bin/signflow $others; do
            echo "== $bin, round $round"
            timeout 120 "$bin" bench --device gpu "${filter[@]}" 2>&1 \
                | grep -v -E "INFO|^device|^op"
        done
    done > "$OUT/compare.txt"
    cat "$OUT/compare.txt"
fi
