//! The `llmmux` binary for `cargo test -p llmmux-chaos`: the same `main` as `src/main.rs`,
//! linked against the gateway library with the `fault-injection` feature (a dev-dependency
//! of this crate), so the short-form scenarios run the real gateway as a child process
//! without a nested `cargo build`.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(llmmux::cli::main_exit_code());
}
