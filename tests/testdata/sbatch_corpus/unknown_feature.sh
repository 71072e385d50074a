#!/bin/bash
# Style: a script written for another site's A100 nodes.
# expect: refuse Invalid feature specification
#SBATCH --constraint=a100
#SBATCH --gres=gpu:1
echo never
