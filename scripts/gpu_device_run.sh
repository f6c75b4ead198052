#!/usr/bin/env bash
# The device side of scripts/gpu_stage.sh, in one call: the shared run.sh (devices, selftest,
# bench, the PyTorch peer), the GPU test binaries, the kernel breakdown of a training step and
# a prediction, and every other staged binary (.gpu/bin/signflow_*) against this build in
# alternating rounds. Everything lands in $OUT (seven files at most: the tool returns eight).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
bash .gpu/run.sh
# run.sh has unpacked .gpu/debs (glvnd among them) and names the ICD in its own shell only.
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

timeout 120 .gpu/bin/signflow bench --device gpu --kernel-times --filter train_step,predict \
    > "$OUT/kernels.txt" 2>&1
grep -v INFO "$OUT/kernels.txt"

others=$(ls .gpu/bin/signflow_* 2>/dev/null)
if [ -n "$others" ]; then
    for round in 1 2; do
        for bin in .gpu/bin/signflow $others; do
            echo "== $bin, round $round"
            timeout 120 "$bin" bench --device gpu --filter matmul,attention,train_step,predict 2>&1 \
                | grep -v -E "INFO|^device|^op"
        done
    done > "$OUT/compare.txt"
    cat "$OUT/compare.txt"
fi
