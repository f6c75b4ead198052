#!/usr/bin/env bash
# Stages one device run on a lent NVIDIA machine: what ../shared/gpu/stage.sh stages (release
# binaries, the Vulkan loader, the PyTorch peer), plus what that machine turned out to need and
# what a short lease should measure in one call.
#
#   bash scripts/gpu_stage.sh [BRANCH...]      from the project's root, on the build machine
#   then the device tool: carry [".gpu"], command `bash .gpu/gpu_device_run.sh`
#
# Adds to .gpu/:
#   debs/       glvnd, without which NVIDIA's Vulkan driver creates no instance there
#   tests/      the GPU test binaries (gpu_parity, model_parity) and the path they were built at
#   bin/signflow_BRANCH.gz   each BRANCH built too, for before/after on the same card in one call
#   gpu_device_run.sh     the device side (see that file)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
bash ../shared/gpu/stage.sh

o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
(cd .gpu/debs && apt-get $o download libglvnd0 libgl1 libglx0 libegl1 libgles2 libopengl0 >/dev/null) \
    || echo "gpu_stage: could not download the glvnd packages" >&2

mkdir -p .gpu/tests
cargo test --release --no-run --test gpu_parity --test model_parity 2>&1 | tail -n 1
for t in gpu_parity model_parity; do
    bin=$(ls -t target/release/deps/"$t"-* | grep -v '\.d$' | head -n 1)
    cp "$bin" ".gpu/tests/$t" && strip ".gpu/tests/$t"
done
# The tests find tests/fixtures through the absolute path they were compiled at.
echo "$root" > .gpu/tests/build_root

for branch in "$@"; do
    tree=$(mktemp -d)
    git worktree add --detach "$tree" "$branch" >/dev/null
    (cd "$tree" && CARGO_TARGET_DIR="$root/target/gpu_stage" cargo build --release --bin signflow)
    bin=".gpu/bin/signflow_${branch//\//_}"
    cp "$root/target/gpu_stage/release/signflow" "$bin"
    # Compressed: the device tool carries 64 MiB at most.
    strip "$bin" && gzip -f "$bin"
    git worktree remove --force "$tree"
done

cp scripts/gpu_device_run.sh .gpu/
du -sh .gpu
echo 'gpu_stage: now the device tool, carry [".gpu"]:  bash .gpu/gpu_device_run.sh'
