#!/bin/bash
# Style: Princeton "della" GPU job (--gres=gpu:N, --constraint on a GPU feature,
# --mem=16GB written with a B).
# expect: run
#SBATCH --job-name=pytorch
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=16GB
#SBATCH --gres=gpu:2
#SBATCH --constraint="h100&ib"
#SBATCH --time=00:05:00
nvidia-smi -L 2>/dev/null || echo "$CUDA_VISIBLE_DEVICES"
