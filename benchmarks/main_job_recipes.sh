#!/usr/bin/env bash
# The main job's model and data (configs/train/tiny.yaml, 800 steps) at other learning rates, warm-up lengths,
# seeds and post-LN stabilisers: the runs behind benchmarks/main_job_recipes.csv and docs/stability.md ("The main
# job's recipe"). About 4 CPU-minutes a run; two at a time on two cores.
#   bash benchmarks/main_job_recipes.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/main_job_recipes}"
mkdir -p "$out"
.venv/bin/python - "$out" <<'PY'
import json, sys
from albertagpt import deepnorm_settings
base = json.load(open("configs/model/tiny.json"))
deepnorm = deepnorm_settings(base["num_hidden_layers"])
variants = {"plain": {}, "b2t": {"b2t_connection": True}, "deepnorm": deepnorm, "deepnorm-b2t": {**deepnorm, "b2t_connection": True}}
for name, fields in variants.items():
    json.dump({**base, **fields}, open(f"{sys.argv[1]}/{name}.json", "w"), indent=2)
PY
run() {  # model learning_rate warmup_steps seed
    .venv/bin/python scripts/train.py --config configs/train/tiny.yaml --model_config "$out/$1.json" \
        --learning_rate "$2" --warmup_steps "$3" --seed "$4" --output_dir "$out/$1_lr$2_warmup$3_seed$4" \
        --report_to none --resume_from_checkpoint none > "$out/$1_lr$2_warmup$3_seed$4.log" 2>&1
}
export -f run
export out
# model learning_rate warmup_steps seed, as in the CSV
grid="plain 0.001 30 42
plain 0.003 30 42
plain 0.005 100 42
plain 0.003 100 42
plain 0.003 100 1
plain 0.003 200 42
plain 0.003 200 1
b2t 0.003 30 42
b2t 0.003 100 42
b2t 0.003 200 42
deepnorm 0.003 30 42
b2t 0.006 200 42
deepnorm 0.006 200 42
deepnorm-b2t 0.003 30 42
deepnorm-b2t 0.003 200 42"
echo "$grid" | xargs -P 2 -L 1 bash -c 'run "$@"' _
echo "model,learning_rate,warmup_steps,seed,final_eval_loss,final_perplexity"
echo "$grid" | while read -r model rate warmup seed; do
    .venv/bin/python -c "
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
loss = [row['eval_loss'] for row in rows if 'eval_loss' in row][-1]
print(f'$model,$rate,$warmup,$seed,{loss:.4f},{math.exp(loss):.2f}')" "$out/${model}_lr${rate}_warmup${warmup}_seed${seed}/metrics.jsonl"
done
