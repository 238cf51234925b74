# Shared by the vision recipes: the paper's training settings and a resumable `run` helper.
# Environment: DATA_DIR (CIFAR, downloaded there on first use; default data),
#              LAUNCH (default `ls-vision`; e.g. "torchrun --nproc_per_node 4 -m ls_plugins.vision.train").
DATA_DIR=${DATA_DIR:-data}
LAUNCH=${LAUNCH:-ls-vision}

# CIFAR ResNets (He et al. 2016): SGD, momentum 0.9, batch 128, lr 0.1 divided by 10 at
# epochs 82 and 123 of 164 (32k and 48k of 64k iterations).
RESNET_RECIPE=(--batch-size 128 --lr 0.1 --momentum 0.9 --wd 1e-4 --epochs 164
               --lr-scheduler step --lr-milestones 82 123)
# ResNet-56 on CIFAR-100: the common 200-epoch schedule with weight decay 5e-4.
RESNET_CIFAR100_RECIPE=(--batch-size 128 --lr 0.1 --momentum 0.9 --wd 5e-4 --epochs 200
                        --lr-scheduler step --lr-milestones 100 150)
# AlexNet-style network on CIFAR-10 (no batch norm, so a smaller learning rate), cosine decay.
ALEXNET_RECIPE=(--batch-size 128 --lr 0.01 --momentum 0.9 --wd 5e-4 --epochs 200
                --lr-scheduler cosine)

# run DIR ARGS...: train into DIR; continue from DIR/checkpoint.pt if a run was interrupted;
# skip DIR if its run has finished (metrics.json holds "final").
run() {
  local dir=$1
  shift
  if [[ -f $dir/metrics.json ]] && grep -q '"final"' "$dir/metrics.json"; then
    echo "finished already: $dir"
    return
  fi
  local resume=()
  if [[ -f $dir/checkpoint.pt ]]; then
    resume=(--resume "$dir/checkpoint.pt")
  fi
  $LAUNCH --data-dir "$DATA_DIR" --output-dir "$dir" "${resume[@]}" "$@"
}

# metric DIR KEY: a final metric of a finished run.
metric() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1] + "/metrics.json"))["final"][sys.argv[2]])' "$1" "$2"
}
