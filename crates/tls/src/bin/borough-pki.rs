//! `borough-pki`: the certificates Borough's processes need, for a deployment without a
//! certificate manager of its own (docker compose, a lab cluster).
//!
//! ```text
//! borough-pki ensure --dir DIR [--trust-domain D] [--service NAME]... [--postgres-name NAME]...
//! ```
//!
//! Creates in `DIR` what is missing: a CA (`ca.crt`, `ca.key`), for each service a
//! certificate naming `spiffe://<D>/borough/<service>` (`<service>.crt`, `.key`; default
//! the four services) and PostgreSQL's (`postgres.crt`, `.key`: localhost and each
//! `--postgres-name`). Existing files are kept: running it again changes nothing, and
//! deleting a service's pair then running it issues a new one (rotation).

#![allow(clippy::print_stdout, clippy::print_stderr)] // A command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: borough-pki ensure --dir DIR [--trust-domain DOMAIN] [--service NAME]... \
         [--postgres-name NAME]..."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("ensure") {
        return usage();
    }
    let (mut dir, mut domain) = (None, "borough.internal".to_owned());
    let (mut services, mut names) = (Vec::new(), Vec::new());
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return usage();
        };
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value)),
            "--trust-domain" => domain = value,
            "--service" => services.push(value),
            "--postgres-name" => names.push(value),
            _ => return usage(),
        }
    }
    let Some(dir) = dir else {
        return usage();
    };
    let services: Vec<&str> = if services.is_empty() {
        borough_tls::generate::SERVICES.to_vec()
    } else {
        services.iter().map(String::as_str).collect()
    };
    match borough_tls::generate::ensure(&dir, &domain, &services, &names) {
        Ok(()) => {
            println!(
                "borough-pki: {} holds the CA and certificates for {} (trust domain {domain})",
                dir.display(),
                services.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("borough-pki: {e}");
            ExitCode::FAILURE
        }
    }
}
