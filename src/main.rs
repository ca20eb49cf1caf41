#![forbid(unsafe_code)]

fn main() {
    std::process::exit(llmmux::cli::main_exit_code());
}
