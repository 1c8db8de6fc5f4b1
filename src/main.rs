// mimalloc: the engine allocates small, short-lived buffers on every core; mimalloc's
// thread-local free lists keep that off the shared heap and out of each other's way.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`, mimalloc 2.x; not among the
/// constants `libmimalloc-sys` names). A test checks it reads as that option's default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps memory freed during the run for reuse instead of handing it back to the OS 10 ms
/// after it goes idle (mimalloc's default). volley's memory is bounded by its queues, so what a
/// run frees it soon needs again: `send` cycles tens of thousands of set-aside jobs through
/// its heap, and each purge came back as page faults and zeroed pages (2,700 faults and ~2% of
/// a 1M-recipient run's CPU). The process keeps what it reached, and that peak is a little
/// higher, since freed pages are no longer returned while others are taken (bench-send's 1M
/// run: 90-94 MiB before, 95-105 after, against a 256 MiB goal).
fn keep_freed_memory() {
    // SAFETY: sets a plain integer option, which mimalloc reads atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    keep_freed_memory();
    // Sessions, and the sink's connections, are a descriptor each.
    mailvolley::rt::raise_open_files();
    let args = match cli::config_file::expand(std::env::args_os().collect()) {
        Ok(args) => cli::Cli::parse_from(args),
        Err(e) => {
            eprintln!("volley: {e}");
            return ExitCode::from(2);
        }
    };
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("volley: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_we_mean() {
        // Its documented default is 10 (ms), unless the environment says otherwise; no other
        // option near it defaults to 10.
        // SAFETY: reads an integer option.
        let (before, next) = unsafe {
            (libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), libmimalloc_sys::mi_option_get(16))
        };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(before, 10);
            assert_ne!(next, 10);
        }
        keep_freed_memory();
        // SAFETY: as above.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, -1);
    }
}
