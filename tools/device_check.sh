#!/usr/bin/env bash
# The GPU checks as one short script, for a session that is lent a CUDA machine.
#
# The GPU image has python3 3.12 with torch, numpy, scipy, pytest and matplotlib, but
# not all of streamer's dependencies, and it reaches no package index. So, here first:
#   tools/device_check.sh --fetch-wheels        # the missing wheels into .whl/ (~6 MB)
# then, through the device tool: run(command="tools/device_check.sh", carry=[".whl"],
# timeout_s=600). It prints and writes under $OUT: the CUDA tests (FIR kernel against
# lfilter, learned denoiser against the CPU), how many 65536-tap 48 kHz streams one GPU
# filters in real time, a chain of CUDA stages handing tensors on against a trip
# through numpy each, and `streamer bench` on the cuda backend.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(pyzmq pydantic pydantic-core annotated-types typing-inspection soundfile cffi pycparser
        sounddevice sigmf defusedxml jsonschema jsonschema-specifications referencing rpds-py)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64 any; do
        platforms+=(--platform "$p")
    done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d .whl "${WHEELS[@]}"
    du -sh .whl
    exit 0
fi

out="${OUT:-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
# streamer itself, from this tree (its models ship as streamer.models), offline.
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/device.txt"

python3 -m pytest -q -p no:cacheprovider tests/stages/test_fir.py \
    tests/stages/test_denoise_learned.py -k "cuda or torch" 2>&1 | tee "$out/tests.txt"

for block in 256 1024; do
    python3 tools/bench_fir.py --taps 65536 --blocks "$block" --backend torch --device cuda \
        --batch-streams 1 16 64 256 1024 --repeats 2 --seconds 2 2>&1 | tee "$out/fir-batch-$block.txt"
done
python3 tools/bench_fir.py --taps 65536 --blocks 256 4096 65536 --channels 1 8 --backend torch \
    --device cuda --algorithm partitioned --no-gnuradio --repeats 3 --seconds 4 \
    2>&1 | tee "$out/fir-grid.txt"

python3 tools/bench_torch_chain.py --device cuda --stages 3 --taps 65536 \
    --blocks 64 256 1024 --repeats 5 2>&1 | tee "$out/torch-chain.txt"

python3 -m streamer bench --backends numpy,cuda --no-latency --blocks 64,256,1024,4096 \
    --out "$out/bench-default" 2>&1 | tee "$out/bench-default.txt"
python3 -m streamer bench config/denoise.toml --backends numpy,cuda --no-latency \
    --blocks 256,1024,4096 --out "$out/bench-denoise" 2>&1 | tee "$out/bench-denoise.txt"
