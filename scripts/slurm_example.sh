#!/usr/bin/env bash
# One multi-node run under Slurm: 2 nodes x 8 GPUs, FSDP2. Submit with `sbatch scripts/slurm_example.sh`.
# Each node runs `adagc-repro run` once (one task per node); that parent starts torchrun for the node's
# GPUs with --node-rank $SLURM_NODEID and a c10d rendezvous on the first node (adagc_repro/distributed/torchrun.py).
# For sweeps across nodes use the Hydra launcher instead: `adagc-repro run -m ... launcher=slurm`.
#SBATCH --job-name=adagc-7b
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR2@120
#SBATCH --output=slurm-%j.out
set -euo pipefail
# The parent turns SIGUSR2 (time limit near) into a graceful stop: every rank checkpoints the same step.
srun --kill-on-bad-exit=1 adagc-repro run \
  model=llama2_7b clip=adagc \
  parallel=fsdp2 parallel.nnodes="$SLURM_JOB_NUM_NODES" parallel.nproc_per_node=8 \
  train.batch_size=64 train.seq_len=4096 train.activation_checkpointing=full \
  paths.results="$PWD/results" paths.checkpoints="${CKPT_ROOT:-$PWD/outputs/ckpt}"
