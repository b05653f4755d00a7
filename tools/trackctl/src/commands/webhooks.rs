//! `trackctl webhooks`: register, list and remove receivers of events, see their deliveries and
//! redeliver failed ones (`/v1/webhooks`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use serde::de::DeserializeOwned;
use trackline_rest::{
    CreateWebhook, DeliveryList, Redeliver, Redelivered, WebhookCreated, WebhookList,
};

use crate::api::{check, Api};
use crate::cli::{GlobalArgs, WebhooksArgs, WebhooksCommand};
use crate::exit::nothing_found;
use crate::history::ops_token;
use crate::when::format_utc;

pub fn run(global: &GlobalArgs, args: &WebhooksArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&global.server)?;
    let token = ops_token(global)?;
    let runtime = super::runtime()?;
    runtime.block_on(async {
        match &args.command {
            WebhooksCommand::Add {
                url,
                events,
                signing_secret,
                json,
            } => {
                let body = CreateWebhook {
                    url: url.clone(),
                    events: (!events.is_empty()).then(|| events.clone()),
                    secret: signing_secret.clone(),
                };
                let request = api.http.post(api.url("/v1/webhooks")).json(&body);
                let created: WebhookCreated =
                    call(&api, &token, request, &format!("registering {url}")).await?;
                if *json {
                    return super::print_json(&created).map(|()| ExitCode::SUCCESS);
                }
                say(format!(
                    "webhook {} -> {} ({})\nsecret {} (shown only now: keep it for verifying signatures)",
                    created.id,
                    created.url,
                    created.events.join(", "),
                    created.secret
                ))
            }
            WebhooksCommand::List { json } => {
                let request = api.http.get(api.url("/v1/webhooks"));
                let list: WebhookList = call(&api, &token, request, "listing webhooks").await?;
                if *json {
                    super::print_json(&list)?;
                } else {
                    let lines: Vec<String> = list
                        .webhooks
                        .iter()
                        .map(|w| {
                            let state = if w.disabled { "disabled (410)" } else { "enabled" };
                            format!("{}  {}  {}  {}", w.id, w.url, state, w.events.join(","))
                        })
                        .collect();
                    if !lines.is_empty() {
                        say(lines.join("\n"))?;
                    }
                }
                if list.webhooks.is_empty() {
                    return Err(nothing_found("no webhook is registered"));
                }
                Ok(ExitCode::SUCCESS)
            }
            WebhooksCommand::Rm { id } => {
                let request = api.http.delete(api.url(&format!("/v1/webhooks/{id}")));
                let response = api.send(request.bearer_auth(&token)).await?;
                check(response, &format!("removing webhook {id}")).await?;
                say(format!("removed webhook {id} and its deliveries"))
            }
            WebhooksCommand::Deliveries { id, status, json } => {
                let request = api
                    .http
                    // status is pending or failed (clap checked): nothing to escape
                    .get(api.url(&format!(
                        "/v1/webhooks/{id}/deliveries?status={status}&limit=10000"
                    )));
                let list: DeliveryList =
                    call(&api, &token, request, &format!("listing deliveries of {id}")).await?;
                if *json {
                    super::print_json(&list)?;
                } else if !list.deliveries.is_empty() {
                    let lines: Vec<String> = list
                        .deliveries
                        .iter()
                        .map(|d| {
                            format!(
                                "{}  {}  {}  attempts {}  since {}  {}",
                                d.event_id,
                                d.kind,
                                d.order_id,
                                d.attempts,
                                format_utc(d.since_ms),
                                d.last_error.as_deref().unwrap_or("")
                            )
                        })
                        .collect();
                    say(lines.join("\n"))?;
                }
                if list.deliveries.is_empty() {
                    return Err(nothing_found(format!("no {status} delivery for {id}")));
                }
                Ok(ExitCode::SUCCESS)
            }
            WebhooksCommand::Redeliver { id, event } => {
                let body = Redeliver {
                    event_id: event.clone(),
                };
                let request = api
                    .http
                    .post(api.url(&format!("/v1/webhooks/{id}/redeliver")))
                    .json(&body);
                let done: Redelivered =
                    call(&api, &token, request, &format!("redelivering to {id}")).await?;
                say(format!("{} failed deliveries pending again", done.redelivered))
            }
        }
    })
}

/// Sends `request` with the ops token and reads its JSON answer.
async fn call<T: DeserializeOwned>(
    api: &Api,
    token: &str,
    request: reqwest::RequestBuilder,
    doing: &str,
) -> anyhow::Result<T> {
    let response = api.send(request.bearer_auth(token)).await?;
    let response = check(response, doing).await?;
    response
        .json()
        .await
        .with_context(|| format!("{doing}: reading the answer"))
}

fn say(text: String) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}
