#!/bin/bash
# Style: Harvard FASRC / Compute Canada GPU job (--gpus-per-node, --cpus-per-gpu,
# --mem-per-gpu, --exclude, lowercase --mem units elsewhere).
# expect: run
#SBATCH --partition=gpu
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-gpu=4
#SBATCH --mem-per-gpu=32gb
#SBATCH --exclude=node1
#SBATCH --time=0-00:05
echo ok
