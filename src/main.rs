// mimalloc: the engine allocates small, short-lived buffers on every core; mimalloc's
// thread-local free lists keep that off the shared heap and out of each other's way.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("volley: {e:#}");
            ExitCode::from(2)
        }
    }
}
