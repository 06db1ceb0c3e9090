//! `bulwark`: the command-line entry point. Today it offers `bulwark decode`, which runs the
//! broker's own packet decoder over a hex dump and explains the verdict; the broker itself
//! (`bulwark serve`) arrives with the engine.
//!
//! The binary parses arguments and wires crates together; protocol logic stays in the crates
//! below it.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use bulwark_proto::{Decoder, DecoderLimits, ProtocolVersion};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "bulwark", version, about = "A security-first MQTT broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode MQTT packets from a hex dump with the broker's strict decoder and print each
    /// packet, or the rule the bytes break and the reason code the broker would answer with.
    Decode {
        /// The bytes, as hex; spaces and colons are ignored (e.g. "10 0c 00 04 4d 51 54 54 ...").
        hex: String,
        /// Decode as the client would (packets a server sends); the default is the server side.
        #[arg(long)]
        client: bool,
        /// Protocol version for the client side (the server side learns it from CONNECT).
        #[arg(long, value_enum, default_value_t = Version::V5)]
        protocol: Version,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Version {
    #[value(name = "3.1")]
    V3_1,
    #[value(name = "3.1.1")]
    V3_1_1,
    #[value(name = "5")]
    V5,
}

impl From<Version> for ProtocolVersion {
    fn from(value: Version) -> Self {
        match value {
            Version::V3_1 => Self::V3_1,
            Version::V3_1_1 => Self::V3_1_1,
            Version::V5 => Self::V5,
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Decode {
            hex,
            client,
            protocol,
        } => decode(&hex, client, protocol.into()),
    }
}

fn decode(hex: &str, client: bool, version: ProtocolVersion) -> ExitCode {
    let bytes = match parse_hex(hex) {
        Ok(bytes) => bytes,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let mut decoder = if client {
        Decoder::client(version, DecoderLimits::PROTOCOL)
    } else {
        Decoder::server(DecoderLimits::PROTOCOL)
    };
    decoder.set_authenticated();
    decoder.handle_bytes(&bytes);
    loop {
        match decoder.poll_packet() {
            Ok(Some(packet)) => println!("{packet:#?}"),
            Ok(None) => break,
            Err(err) => {
                println!("refused: {err}");
                println!("reason code: {}", err.reason_code());
                return ExitCode::FAILURE;
            }
        }
    }
    if decoder.buffered() > 0 {
        println!(
            "incomplete: {} bytes of a packet wait for more",
            decoder.buffered()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    if digits.len() % 2 != 0 {
        return Err("odd number of hex digits".to_owned());
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("not a hex byte: {:?}", String::from_utf8_lossy(pair)))
        })
        .collect()
}
