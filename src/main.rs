//! `quorumkv`: runs one replica, or `quorumkv client [HOST:PORT]`.
//! Bad flags print one line naming the flag and exit 2.

use quorumkv::config::{self, Parsed};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("client") {
        let code = quorumkv::client::line_client::run(&args[1..]);
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    match config::parse_args(&args) {
        Ok(Parsed::Help(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Parsed::Run(cfg)) => match quorumkv::server::run(*cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("quorumkv: {e}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("quorumkv: {e}");
            ExitCode::from(2)
        }
    }
}
