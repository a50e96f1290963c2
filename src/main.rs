//! `quorumkv`: runs one replica; `quorumkv client|dump|load HOST:PORT` talk to one.
//! Bad flags print one line naming the flag and exit 2.

use quorumkv::config::{self, Parsed};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sub: Option<fn(&[String]) -> i32> = match args.first().map(String::as_str) {
        Some("client") => Some(quorumkv::client::line_client::run),
        Some("dump") => Some(quorumkv::backup::dump),
        Some("load") => Some(quorumkv::backup::load),
        _ => None,
    };
    if let Some(run) = sub {
        return ExitCode::from(run(&args[1..]).clamp(0, 255) as u8);
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
