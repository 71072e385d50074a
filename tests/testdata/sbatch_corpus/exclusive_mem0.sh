#!/bin/bash
# Style: TACC/ALCF whole-node job (--exclusive, --mem=0, -w node list).
# expect: run
#SBATCH -N 1
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH -w node2
#SBATCH -t 5
hostname
