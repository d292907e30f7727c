//! `imreport app …`: offline on the data dir when no server holds it, otherwise through the
//! running server's admin API (found in DATA_DIR/admin.json), so changes apply without a restart.
//! With PostgreSQL, straight in the database: every server reads apps from it on each request.

use crate::launch::{self, ADMIN_FILE, AdminEndpoint};
use crate::settings::{Settings, SettingsArgs, StoreChoice};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use imreport_domain::Clock;
use imreport_domain::app::{AppInfo, admin_proof, generate_token};
use imreport_store::apps::{self, CreateApp, Credentials, RotateSecret};
use imreport_store::{Store, StoreError};
use std::sync::Arc;

#[derive(Subcommand)]
pub enum AppAction {
    /// Add an app; prints its key and master secret (random 24-character ones when not given).
    Create {
        #[command(flatten)]
        settings: SettingsArgs,
        #[arg(long)]
        app_key: Option<String>,
        #[arg(long)]
        master_secret: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Print the credentials as JSON
        #[arg(long)]
        json: bool,
    },
    /// List apps (keys and names; secrets are never shown again).
    List {
        #[command(flatten)]
        settings: SettingsArgs,
        #[arg(long)]
        json: bool,
    },
    /// Replace an app's master secret; the old one stops working at once.
    RotateSecret {
        #[command(flatten)]
        settings: SettingsArgs,
        #[arg(long)]
        app_key: String,
        #[arg(long)]
        master_secret: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove an app: its credentials stop working at once; its data ages out with retention.
    Delete {
        #[command(flatten)]
        settings: SettingsArgs,
        #[arg(long)]
        app_key: String,
    },
}

pub(crate) enum Target {
    /// The store itself: the embedded one when no server holds it, or PostgreSQL.
    Offline(Arc<dyn Store>),
    Online(AdminEndpoint),
}

pub(crate) async fn open_target(s: &Settings) -> Result<Target> {
    let clock = Clock::System;
    if let StoreChoice::Postgres { .. } = s.store_choice()? {
        return Ok(Target::Offline(launch::open_store(s, &clock).await?.store));
    }
    let admin_file = s.data_dir.join(ADMIN_FILE);
    // A server running on this data dir is asked through its admin API, once it has proved it
    // is that server: admin.json outlives a server killed with SIGKILL, and whatever listens on
    // its port now must not receive the token or a chosen secret.
    if let Ok(text) = std::fs::read_to_string(&admin_file)
        && let Ok(ep) = serde_json::from_str::<AdminEndpoint>(&text)
        && proven(&ep).await
    {
        return Ok(Target::Online(ep));
    }
    match launch::open_store(s, &clock).await {
        Ok(stores) => {
            // No server holds the data dir: an admin.json left here is stale.
            if admin_file.exists() {
                std::fs::remove_file(&admin_file)
                    .with_context(|| format!("cannot remove {}", admin_file.display()))?;
                eprintln!(
                    "removed a stale {} (its server is gone)",
                    admin_file.display()
                );
            }
            Ok(Target::Offline(stores.store))
        }
        Err(e) if matches!(e.downcast_ref(), Some(StoreError::Locked(_))) => bail!(
            "the data dir {} is in use by a running imreport server, but its admin API (per {}) did not prove itself; restart the server, or stop it and retry",
            s.data_dir.display(),
            admin_file.display()
        ),
        Err(e) => Err(e),
    }
}

/// Whether the admin API at `ep` answers a fresh challenge with the proof only the holder of
/// its token can give. Nothing secret is sent.
async fn proven(ep: &AdminEndpoint) -> bool {
    let nonce = generate_token();
    let answer = async {
        let v: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/admin/v1/proof", ep.url))
            .query(&[("nonce", &nonce)])
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["proof"].as_str().map(str::to_owned)
    };
    answer
        .await
        .is_some_and(|p| p == admin_proof(&ep.token, &nonce))
}

async fn call<T: serde::de::DeserializeOwned>(
    ep: &AdminEndpoint,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<T> {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method, format!("{}{path}", ep.url))
        .bearer_auth(&ep.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .context("cannot reach the running server's admin API")?;
    let status = resp.status();
    let value: serde_json::Value = resp.json().await.context("unreadable admin API answer")?;
    if !status.is_success() {
        let msg = value["error"]["message"]
            .as_str()
            .unwrap_or("unknown error")
            .to_owned();
        bail!("{msg}");
    }
    Ok(serde_json::from_value(value)?)
}

fn print_credentials(c: &Credentials, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(c)?);
    } else {
        println!("app_key: {}", c.app_key);
        println!("master_secret: {}", c.master_secret);
        println!("name: {}", c.name);
        eprintln!(
            "Keep the master secret now: it is stored only as a hash and cannot be shown again."
        );
    }
    Ok(())
}

pub async fn run(action: AppAction) -> Result<()> {
    use reqwest::Method;
    match action {
        AppAction::Create {
            settings,
            app_key,
            master_secret,
            name,
            json,
        } => {
            let req = CreateApp {
                app_key,
                master_secret,
                name,
            };
            let c = match open_target(&settings.resolve()?).await? {
                Target::Offline(store) => apps::create_app(store.as_ref(), req).await?,
                Target::Online(ep) => {
                    let body = Some(serde_json::to_value(req)?);
                    call(&ep, Method::POST, "/admin/v1/apps", body).await?
                }
            };
            print_credentials(&c, json)
        }
        AppAction::List { settings, json } => {
            let apps: Vec<AppInfo> = match open_target(&settings.resolve()?).await? {
                Target::Offline(store) => apps::list_apps(store.as_ref()).await?,
                Target::Online(ep) => call(&ep, Method::GET, "/admin/v1/apps", None).await?,
            };
            if json {
                println!("{}", serde_json::to_string(&apps)?);
            } else {
                for a in apps {
                    println!("{}\t{}", a.app_key, a.name);
                }
            }
            Ok(())
        }
        AppAction::RotateSecret {
            settings,
            app_key,
            master_secret,
            json,
        } => {
            let req = RotateSecret { master_secret };
            let c = match open_target(&settings.resolve()?).await? {
                Target::Offline(store) => {
                    apps::rotate_secret(store.as_ref(), &app_key, req).await?
                }
                Target::Online(ep) => {
                    let path = format!("/admin/v1/apps/{app_key}/rotate-secret");
                    let body = Some(serde_json::to_value(req)?);
                    call(&ep, Method::POST, &path, body).await?
                }
            };
            print_credentials(&c, json)
        }
        AppAction::Delete { settings, app_key } => {
            match open_target(&settings.resolve()?).await? {
                Target::Offline(store) => store.delete_app(&app_key).await?,
                Target::Online(ep) => {
                    let path = format!("/admin/v1/apps/{app_key}");
                    let _: serde_json::Value = call(&ep, Method::DELETE, &path, None).await?;
                }
            }
            println!("deleted {app_key}");
            Ok(())
        }
    }
}
