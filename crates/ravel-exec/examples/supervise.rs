//! Stands in for `ravel __supervise RUN_DIR` in this crate's tests: the supervisor has to
//! run as its own process, entered the way the `ravel` binary enters it.

use std::path::Path;
use std::process::exit;

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    match args.as_slice() {
        [sub, standby] if sub == ravel_exec::SUPERVISE_SUBCOMMAND && standby == ravel_exec::STANDBY => {
            exit(ravel_exec::supervise_standby())
        }
        [sub, zygote] if sub == ravel_exec::SUPERVISE_SUBCOMMAND && zygote == ravel_exec::ZYGOTE => {
            exit(ravel_exec::zygote_main())
        }
        [sub, run_dir] if sub == ravel_exec::SUPERVISE_SUBCOMMAND => {
            exit(ravel_exec::supervise_main(Path::new(run_dir), false))
        }
        [sub, run_dir, from] if sub == ravel_exec::SUPERVISE_SUBCOMMAND && from == ravel_exec::SPEC_FROM_STDIN => {
            exit(ravel_exec::supervise_main(Path::new(run_dir), true))
        }
        _ => exit(2),
    }
}
