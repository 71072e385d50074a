#!/bin/bash
# Style: university MATLAB job (-L licenses, --nodes range, --mincpus, --tasks-per-node,
# an account no accounts file names: accepted, as Slurm without enforcement).
# expect: run
#SBATCH -L matlab:1
#SBATCH --nodes=1-2
#SBATCH --mincpus=4
#SBATCH --tasks-per-node=1
#SBATCH --account=physics-lab
#SBATCH --qos=normal
echo matlab
