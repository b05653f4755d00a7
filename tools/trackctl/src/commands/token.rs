//! `trackctl token`: mint a token offline and print it alone, so `$(trackctl token ops)` works.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{GlobalArgs, TokenArgs, TokenRole};
use crate::token::{keys_from_secret, mint};

pub fn run(global: &GlobalArgs, args: &TokenArgs) -> anyhow::Result<ExitCode> {
    let keys = keys_from_secret(global.secret.as_deref())?;
    let (role, subject) = match &args.role {
        TokenRole::Courier { id } => ("courier", Some(id.as_str())),
        TokenRole::Watch { order } => ("watch", Some(order.as_str())),
        TokenRole::Ops => ("ops", None),
    };
    let token = mint(&keys, role, subject, args.ttl)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{token}")
        .and_then(|()| stdout.flush())
        .context("writing the token to stdout")?;
    Ok(ExitCode::SUCCESS)
}
