#!/usr/bin/env bash
# Runs on a GPU host, from the repository root, with the bundle that trainer/cuda/build.sh
# made in target/gpu-bundle/: our logits against timm's on the same weights, CUDA-vs-CPU
# numerics, then our A1 step against PyTorch + timm's on the same card in f32, amp and bf16. Each part has its own time limit so that one slow part
# cannot eat the others. Results: stdout, and $OUT (or /tmp/gpu-out) for the full logs.
set -uo pipefail
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
part timm_logits 60 bash -c "'$t' export --no-zero-init-last '$work/w.safetensors' && \
    '$t' logits --weights '$work/w.safetensors' > '$work/ours.json' && \
    python3 trainer/benches/timm_logits.py '$work/w.safetensors' '$work/ours.json'"
part check_f32 70 "$t" check-device --device cuda --batch 8 --img-size 64
# (c) The A1 step at batch 256: amp (the recipes' precision; PyTorch's autocast, eager and
# compiled), then pure bf16 and f32. Ratios: ours / torch's samples/s in the summary lines.
part bench_amp 120 "$t" bench --device cuda --dtype amp --batch 256 --warmup 3 --steps 10 --json
part torch_amp 45 python3 trainer/benches/torch_step.py --dtype amp --batch 256 --warmup 5 --steps 20
part torch_amp_compile 90 python3 trainer/benches/torch_step.py --dtype amp --compile --batch 256 --warmup 5 --steps 20
part bench_bf16 100 "$t" bench --device cuda --dtype bf16 --batch 256 --warmup 3 --steps 10 --json
part torch_bf16 45 python3 trainer/benches/torch_step.py --dtype bf16 --batch 256 --warmup 5 --steps 20
part bench_f32 100 "$t" bench --device cuda --dtype f32 --batch 256 --warmup 3 --steps 10 --json
part torch_f32 40 python3 trainer/benches/torch_step.py --dtype f32 --batch 256 --warmup 5 --steps 20
# (a) bf16 against f32; amp against the CPU's amp (the same roundings: only the arithmetic differs).
part check_bf16 40 "$t" check-device --device cuda --dtype bf16 --tolerance 5e-2 --batch 8 --img-size 64
part check_amp 40 "$t" check-device --device cuda --dtype amp --reference-dtype amp --tolerance 5e-2 --batch 8 --img-size 64
# (g) The ranks: 2 virtual ranks of 64 against one rank of 128, then the same 2 ranks through a
# one-GPU DistributedContext (NCCL all-reduce in backward, as --devices on several GPUs).
part ranks_nccl 120 "$t" bench --device cuda --batch 64 --world-size 2 --distributed --warmup 2 --steps 5
echo "=== summary"
grep -h '^{' "$out"/bench_*.log "$out"/torch_*.log 2>/dev/null
grep -h "worst" "$out"/check_*.log 2>/dev/null
grep -h '"relative"' "$out"/timm_logits.log 2>/dev/null
grep -h "ranks of\|DistributedContext" "$out"/ranks_nccl.log 2>/dev/null
