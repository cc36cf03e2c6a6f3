//! `natter`: developer commands. `natter token --user alice` prints a development token
//! signed with the gateway's HS256 secret (`NATTER_JWT_SECRET`, or the built-in
//! development secret that a gateway without configuration also uses).

use anyhow::Context;
use clap::{Parser, Subcommand};
use natter_auth::{self as auth, DEV_JWT_SECRET};

#[derive(Debug, Parser)]
#[command(name = "natter", about = "Natter developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a development token (HS256 JWT) for a user.
    Token {
        /// User id: 1-64 of A-Z a-z 0-9 _ -.
        #[arg(long)]
        user: String,
        /// Device id to put in the token (else `?device=` or `default`).
        #[arg(long)]
        device: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl: u64,
        #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        #[arg(long, env = "NATTER_JWT_ISSUER")]
        issuer: Option<String>,
        #[arg(long, env = "NATTER_JWT_AUDIENCE")]
        audience: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Token {
            user,
            device,
            ttl,
            secret,
            issuer,
            audience,
        } => {
            let secret = secret.as_deref().unwrap_or(DEV_JWT_SECRET);
            let token = auth::mint_hs256(
                secret.as_bytes(),
                &user,
                device.as_deref(),
                ttl,
                issuer.as_deref(),
                audience.as_deref(),
            )
            .context("cannot mint a token")?;
            println!("{token}");
        }
    }
    Ok(())
}
