#!/bin/bash
# Style: a job needing a license the site does not have.
# expect: refuse Invalid license specification
#SBATCH -L comsol:1
echo never
