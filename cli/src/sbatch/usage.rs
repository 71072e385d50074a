//! What `sbatch --help` prints: the options berth implements, in Slurm's layout.

/// What `sbatch --help` prints.
pub const USAGE: &str = "\
Usage: sbatch [OPTIONS(0)...] [ : [OPTIONS(N)...]] script(0) [args(0)...]

Parallel run options (supported by berth):
  -A, --account=name          charge job to specified account
  -c, --cpus-per-task=ncpus   number of cpus required per task
      --container-image=PATH  [pyxis] run the script in a container: an OCI image
                              layout directory or archive, or a rootfs directory
      --container-mounts=SRC:DST[:FLAGS][,SRC:DST...]
                              [pyxis] bind mount[s] inside the container; flags
                              separated with '+', e.g. ro+rprivate
      --container-workdir=PATH
                              [pyxis] working directory inside the container
      --container-env=NAME[,NAME...]
                              [pyxis] variables whose submitted value wins over
                              the image's
  -D, --chdir=directory       set working directory for batch script
  -e, --error=err             file for batch script's standard error
      --export[=names]        specify environment variables to export
  -G, --gpus=n                count of GPUs required for the job (total, split over nodes)
      --gpus-per-node=n       number of GPUs required per allocated node
      --gpus-per-task=n       number of GPUs required per task (tasks spread evenly)
      --gres=list             required generic resources (gpu[:type][:count] only)
  -H, --hold                  submit job in held state
  -J, --job-name=jobname      name of job
      --mem=MB                minimum amount of real memory per node
  -N, --nodes=N               number of nodes on which to run
  -n, --ntasks=ntasks         number of tasks to run
  -o, --output=out            file for batch script's standard output
  -p, --partition=partition   partition requested
      --parsable              outputs only the jobid
  -q, --qos=qos               quality of service
      --switches=max-switches{@max-time-to-wait}
                              Optimum switches and max time to wait for optimum
  -t, --time=minutes          time limit
      --wrap[=command string] wrap command string in a sh script and submit

Help options:
  -h, --help                  show this help message
      --usage                 display brief usage message
  -V, --version               output version information and exit

Other Slurm sbatch options are recognised and refused with an error naming them.
";
