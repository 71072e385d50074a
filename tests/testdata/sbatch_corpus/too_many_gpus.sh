#!/bin/bash
# Style: a 16-GPU-per-node request no described node has.
# expect: refuse Requested node configuration is not available
#SBATCH --gres=gpu:16
echo never
