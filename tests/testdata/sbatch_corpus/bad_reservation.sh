#!/bin/bash
# Style: a job written for a maintenance-window reservation that does not exist here.
# expect: refuse Requested reservation is invalid
#SBATCH --reservation=maint
echo never
