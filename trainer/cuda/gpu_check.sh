#!/usr/bin/env bash
# Runs on a GPU host, from the repository root, with the bundle that trainer/cuda/build.sh
# made in target/gpu-bundle/: our logits against timm's on the same weights, CUDA-vs-CPU
# numerics, our A1 step against PyTorch + timm's on the same card in amp, bf16 and f32, the
# upload from the loader's ring, device memory over 200 steps, 300 steps of A3, the ranks, two
# processes joined by MPI.
# Each part has its own time limit so that one slow part cannot eat the others. Results: stdout, and $OUT (or /tmp/gpu-out) for the full logs.
#
# Usage: OUT=DIR trainer/cuda/gpu_check.sh    (on the GPU host, from the repository root)
# (No -e: each part has its own limit and a failing part must not stop the others.)
set -uo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
bundle=target/gpu-bundle
work=/tmp/rsb-gpu
mkdir -p "$work"
xz -dc "$bundle/trainer.xz" > "$work/trainer" && chmod +x "$work/trainer" || exit 1
# Libraries the build machine linked that a GPU image may lack, then CUDA's own (NVRTC).
cuda_libs=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib 2>/dev/null | tr '\n' ':')
nvrtc=$(python3 -c 'import nvidia, os; print(":".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in os.listdir(p) if os.path.isdir(os.path.join(p, d, "lib"))))' 2>/dev/null)
export LD_LIBRARY_PATH="$bundle/lib:${cuda_libs}${nvrtc}:${LD_LIBRARY_PATH:-}"
t=$work/trainer
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader | tee "$out/gpu.txt"
ldd "$t" | grep -E "not found" && echo "missing libraries above"
part() { # name seconds command...
    local name=$1 secs=$2; shift 2
    echo "=== $name"
    local s=$(date +%s%N)
    timeout "$secs" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 14 "$out/$name.log"
    echo "=== $name: rc=$rc in $(( ($(date +%s%N) - s) / 1000000 )) ms"
}
# Same weights, same probe batch: our eval logits (CPU) against timm's in float64.
# The run has 600 s at most: the parts come in the order they matter, each with its own cap,
# so that a slow or failing one costs only itself and what the outer limit cuts is the least
# needed. Data for (d) and (f): target/gpu-data/imagenet-192 (trainer/cuda/gpu_data.sh; carry it).
data=target/gpu-data/imagenet-192
# (b) Same weights, same probe batch: our eval logits (CPU) against timm's in float64.
part timm_logits 30 bash -c "'$t' export --no-zero-init-last '$work/w.safetensors' && \
    '$t' logits --weights '$work/w.safetensors' > '$work/ours.json' && \
    python3 trainer/benches/timm_logits.py '$work/w.safetensors' '$work/ours.json'"
# (a) CUDA against the CPU, the matrix trainer/cuda/standin.sh runs on cube-cpu: forward, every
# gradient, every BN statistic and one LAMB step, for ResNet-18 at eighth width (32 px) and
# ResNet-50 (64 px); f32; amp against the CPU's amp (the same roundings: only the arithmetic
# differs); pure bf16 against bf16.
r18="--model resnet18 --width 0.125 --small-stem --num-classes 10 --img-size 32 --batch 16"
r50="--model resnet50 --img-size 64 --batch 8"
part check_r50_f32 40 "$t" check-device --device cuda $r50 --json
part check_r50_amp 25 "$t" check-device --device cuda --dtype amp --reference-dtype amp $r50 --json
part check_r50_bf16 20 "$t" check-device --device cuda --dtype bf16 --reference-dtype bf16 $r50 --json
part check_r18_f32 20 "$t" check-device --device cuda $r18 --json
part check_r18_amp 20 "$t" check-device --device cuda --dtype amp --reference-dtype amp $r18 --json
part check_r18_bf16 20 "$t" check-device --device cuda --dtype bf16 --reference-dtype bf16 $r18 --json
# (a2) configs/smoke.toml, 10 steps from the same initial weights and batches (the in-process
# loader on gpu_data.sh's smoke dataset) on CUDA and on the CPU: the losses side by side.
smoke=target/gpu-data/smoke
if [[ -d $smoke ]]; then
    part smoke_flex 40 "$t" train --config configs/smoke.toml --shards "$smoke" -j 8 --device flex --max-steps 10 --out "$work/smoke_flex"
    part smoke_cuda 40 "$t" train --config configs/smoke.toml --shards "$smoke" -j 8 --device cuda --max-steps 10 --out "$work/smoke_cuda"
    python3 -c '
import json, sys
l = lambda r: [json.loads(x)["loss"] for x in open(r + "/metrics.jsonl") if "\"step\"" in x]
a, b = l(sys.argv[1]), l(sys.argv[2])
for i, (x, y) in enumerate(zip(a, b)): print(f"smoke step {i + 1}: flex {x:.7f} cuda {y:.7f} relative {abs(x - y) / abs(x):.1e}")
' "$work/smoke_flex" "$work/smoke_cuda" > "$out/smoke.txt" 2>&1
fi
# (c) The A1 step at batch 256 in amp (the recipes' precision) against PyTorch's autocast,
# eager and compiled. Ratios: ours / torch's samples/s in the summary lines.
part bench_amp 90 "$t" bench --device cuda --dtype amp --batch 256 --warmup 3 --steps 17 --json
part torch_amp 35 python3 trainer/benches/torch_step.py --dtype amp --batch 256 --warmup 5 --steps 20
part torch_amp_compile 60 python3 trainer/benches/torch_step.py --dtype amp --compile --batch 256 --warmup 5 --steps 20
# (d) The upload: batches through the loader's ring, each slot page-locked and copied by DMA
# (host copies 0 MB per step) against the loader core's batches in process memory (our copy
# plus cubecl's pinned staging).
if [[ -d $data ]]; then
    part upload_ring 45 "$t" bench --device cuda --dtype amp --batch 256 --shards "$data" --transform a3 -j 12 --ring --warmup 3 --steps 20
    part upload_copied 40 "$t" bench --device cuda --dtype amp --batch 256 --shards "$data" --transform a3 -j 12 --warmup 3 --steps 20
fi
# (e) Device memory after 200 steps against bench_amp's after 20 (burn #5212: memory growing).
part memory_200 50 "$t" bench --device cuda --dtype amp --batch 256 --warmup 3 --steps 197 --json
# (f) configs/a3.toml at 160 px, 300 steps on one GPU through the in-process loader's rings
# (one rank of 256), the loss going down: first and last lines of its metrics.
if [[ -d $data ]]; then
    part a3_300 90 "$t" train --config configs/a3.toml --shards "$data" -j 12 --device cuda \
        --world-size 1 --val-split train --eval-interval 50 --max-steps 300 --out "$work/a3"
    cp "$work/a3/metrics.jsonl" "$out/a3_metrics.jsonl" 2>/dev/null
fi
# (g) The ranks: 2 virtual ranks of 64 against one rank of 128, then the same 2 ranks through a
# one-GPU DistributedContext (NCCL all-reduce in backward, as --devices on several GPUs).
part ranks_nccl 45 "$t" bench --device cuda --batch 64 --world-size 2 --distributed --warmup 2 --steps 5
# (h) Two processes on the one GPU joined by MPI (the bundle's Open MPI, the one the binary was
# linked with, even where the host has another): the smoke recipe at 2 ranks, one per process, against one process of 2 virtual ranks
# (the losses side by side), then the sum of ResNet-50's gradients between the 2 processes.
if [[ -d $smoke ]]; then
    if [[ -f $bundle/openmpi.tar.xz ]]; then
        tar -C "$work" -xJf "$bundle/openmpi.tar.xz" && source trainer/cuda/openmpi_env.sh "$work/ompi"
    fi
    mpi="mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2"
    part mpi_one 40 "$t" train --config configs/smoke.toml --shards "$smoke" -j 8 --device cuda --world-size 2 --max-steps 10 --out "$work/mpi_one"
    part mpi_two 60 $mpi "$t" train --config configs/smoke.toml --shards "$smoke" -j 4 --device cuda --world-size 2 --max-steps 10 --out "$work/mpi_two"
    python3 -c '
import json, sys
l = lambda r: [json.loads(x)["loss"] for x in open(r + "/metrics.jsonl") if "\"step\"" in x]
a, b = l(sys.argv[1]), l(sys.argv[2])
for i, (x, y) in enumerate(zip(a, b)): print(f"mpi step {i + 1}: one process {x:.7f} two {y:.7f} relative {abs(x - y) / abs(x):.1e}")
' "$work/mpi_one" "$work/mpi_two" > "$out/mpi.txt" 2>&1
    part mpi_all_reduce 40 $mpi "$t" bench --all-reduce --device cuda --model resnet50 --warmup 2 --steps 10
fi
# (c, continued) Pure bf16 and f32, both sides.
part bench_bf16 45 "$t" bench --device cuda --dtype bf16 --batch 256 --warmup 3 --steps 10 --json
part torch_bf16 25 python3 trainer/benches/torch_step.py --dtype bf16 --batch 256 --warmup 5 --steps 20
part bench_f32 45 "$t" bench --device cuda --dtype f32 --batch 256 --warmup 3 --steps 10 --json
part torch_f32 25 python3 trainer/benches/torch_step.py --dtype f32 --batch 256 --warmup 5 --steps 20
echo "=== summary"
grep -h '^{' "$out"/bench_*.log "$out"/torch_*.log "$out"/memory_200.log 2>/dev/null
grep -h "host copies" "$out"/upload_*.log 2>/dev/null
grep -h '^{"' "$out"/check_*.log 2>/dev/null
grep -h "cannot use" "$out"/check_*.log 2>/dev/null
cat "$out/smoke.txt" 2>/dev/null
grep -h '"relative"' "$out"/timm_logits.log 2>/dev/null
grep -h "ranks of\|DistributedContext" "$out"/ranks_nccl.log 2>/dev/null
cat "$out/mpi.txt" 2>/dev/null
grep -h "summed over" "$out"/mpi_all_reduce.log 2>/dev/null
[[ -f $out/a3_metrics.jsonl ]] && grep '"kind":"step"' "$out/a3_metrics.jsonl" | sed -n '1p;$p' 
