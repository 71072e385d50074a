//! `berth`: the command-line front end. Also answers to `sbatch`, `squeue`, `scancel`,
//! `sinfo` and `scontrol` when invoked through a symlink of that name.

use berth_cli::commands;

fn main() {
    // A job shim is this same executable started with a special argument.
    berth_agent::shim::run_if_shim();
    let mut args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    let invoked = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("berth")
        .to_string();
    let (cmd, rest) = if commands::TOOLS.contains(&invoked.as_str()) {
        (invoked, args.split_off(1))
    } else {
        args.remove(0);
        commands::split_global(args)
    };
    // A client command makes one call: one thread does it, and starting a worker per core
    // would cost more than the call. `berth dev` runs a whole daemon and gets them all.
    let rt = if cmd == "dev" {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    let code = rt.block_on(commands::run(&cmd, rest));
    std::process::exit(code);
}
