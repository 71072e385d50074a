#!/bin/bash
# Style: NERSC/Princeton Research Computing MPI example (--nodes, --ntasks-per-node,
# --cpus-per-task, --mem-per-cpu, --time, --mail-type/--mail-user).
# expect: run
#SBATCH --job-name=mpi-job
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=2
#SBATCH --mem-per-cpu=4G
#SBATCH --time=00:10:00
#SBATCH --mail-type=begin,end,fail
#SBATCH --mail-user=someone@example.edu
echo "tasks=$SLURM_NTASKS"
