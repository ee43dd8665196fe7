export PATH=/opt/torch/.venv/bin:$PATH DMC_VENV=/opt/torch/.venv DMC_BUILD=build-gpu TORCH_CUDA_ARCH_LIST=9.0 DMC_JOBS=32
scripts/build.sh -DCMAKE_CUDA_ARCHITECTURES=90 > $OUT/build.log 2>&1 || { tail -20 $OUT/build.log; exit 1; }
B=$PWD/build-gpu W=/tmp/dist TOK=.carry/shared/tokenizers/llama2/tokenizer.model; mkdir -p $W
two() { p=$((20000 + RANDOM % 20000)); for r in 0 1; do RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$p "$@" & done; wait; }
for m in vanilla dmc; do $B/dmc_dist_worker $W/a.st $m 1 cuda; two $B/dmc_dist_worker $W/b.st $m 1 cuda 1 2>/dev/null
python3 -c "
from safetensors.torch import load_file as L; a=L('$W/a.st'); b=L('$W/b.st')
print('$m sp', max(((b[k]-a[k]).norm()/a[k].norm()).item() for k in a))"; done
$B/dmc data prepare --input '/usr/share/common-licenses/*' --tokenizer $TOK --out $W/data --threads 16 > /dev/null 2>&1
common="--tokenizer $TOK --data $W/data --preset llama-1b --seq-len 4096 --global-batch 8 --log-every 4 --eval-every 0 --eval-batches 1 --device cuda --dtype bf16 --lr 1e-4 --warmup-steps 0 --keep-last 1 --train-steps 12"
r() { n=$1; e=$2; shift 2; env $e DMC_BIN=$B/dmc timeout 120 scripts/launch.sh 2 - $common "$@" --out $W/$n > $OUT/$n.log 2>&1; echo "$n rc=$? $(grep 'step 12/12' $OUT/$n.log | grep -o '[0-9]* tok/s.*')"; }
timeout 120 $B/dmc train $common --micro-batch 4 --out $W/g1 > $OUT/g1.log 2>&1; echo "g1 $(grep 'step 12/12' $OUT/g1.log | grep -o '[0-9]* tok/s.*')"
r tp X=1 --micro-batch 4 --tensor-parallel 2
r tp_cdm1 CUDA_DEVICE_MAX_CONNECTIONS=1 --micro-batch 4 --tensor-parallel 2
r tp_hp TORCH_NCCL_HIGH_PRIORITY=1 --micro-batch 4 --tensor-parallel 2
r tp_mb8 X=1 --micro-batch 8 --tensor-parallel 2
r dp_cdm1 CUDA_DEVICE_MAX_CONNECTIONS=1 --micro-batch 4
r dp X=1 --micro-batch 4
