//! `imreport serve`: the server process. Builds the application from its settings (see
//! [`crate::launch`]), prints where it listens, fills the demo app when asked, and shuts down
//! gracefully on SIGTERM or Ctrl-C.

use crate::launch::{self, Hooks, write_private};
use crate::settings::Settings;
use anyhow::{Context, Result};
use imreport_store::Store;
use imreport_store::apps::{self, CreateApp};
use serde::{Deserialize, Serialize};

/// A line to stdout for the person or script that started the server. A stdout nobody reads any
/// more (a closed pipe) must not stop a running server, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Log lines to stderr at `level` (the storage engine's own at warn), or as `IMREPORT_LOG` says.
pub fn init_logging(level: &str, json: bool) {
    // The storage engine's own info lines (tables created, flushes) are noise for operators.
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMREPORT_LOG")
        .unwrap_or_else(|_| format!("{level},fjall=warn,lsm_tree=warn").into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match json {
        // One JSON object a line, with the request's span (and so its id) in every line.
        true => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        false => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

pub async fn run(s: Settings, demo: bool) -> Result<()> {
    init_logging("info", s.log_format == "json");
    let running = launch::start(&s, Hooks::default()).await?;
    let demo = match demo {
        true => Some(demo_app(&s, running.stores.store.as_ref()).await?),
        false => None,
    };
    tracing::info!(addr = %running.addr, admin = %running.admin_addr, store = %s.store_choice()?.kind(), data_dir = %s.data_dir.display(), report_tz = %s.report_tz, "imreport serving");
    say!("imreport listening on http://{}", running.addr);
    say!("console: {}/console", running.url());
    if let Some(m) = running.metrics_addr {
        say!("metrics: http://{m}/metrics");
    }
    if let Some(d) = &demo {
        print_demo(d, &running.url());
    }
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// The demo app's credentials, kept in DATA_DIR/demo.json so that later starts can print them.
#[derive(Serialize, Deserialize)]
struct DemoApp {
    app_key: String,
    master_secret: String,
}

const DEMO_FILE: &str = "demo.json";
const DEMO_MESSAGES: u64 = 200_000;

/// Creates the demo app and fills it with a week of generated traffic ending now (first start
/// only; later starts reuse it).
async fn demo_app(s: &Settings, store: &dyn Store) -> Result<DemoApp> {
    let path = s.data_dir.join(DEMO_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(serde_json::from_str(&text)?);
    }
    let creds = apps::create_app(
        store,
        CreateApp {
            name: Some("demo".into()),
            ..Default::default()
        },
    )
    .await?;
    let app = store
        .app(&creds.app_key)
        .await?
        .context("demo app just created")?;
    let args = crate::loadgen::LoadgenArgs::for_demo(DEMO_MESSAGES, &s.report_tz);
    let now = imreport_domain::time::now_ms();
    let mut generator = crate::loadgen::Generator::new(&args, now)?;
    let limits = s.ingest_limits();
    tracing::info!(
        messages = DEMO_MESSAGES,
        "filling the demo app with a week of generated traffic"
    );
    loop {
        let mut body = String::new();
        let n = generator
            .by_ref()
            .take(s.max_events.min(5_000))
            .map(|e| e.write_ndjson(&mut body))
            .count();
        if n == 0 {
            break;
        }
        let events =
            imreport_domain::event::decode_batch(body.as_bytes(), &app.key, now + 1, &limits)?;
        store.ingest(&app, events).await?;
    }
    let demo = DemoApp {
        app_key: creds.app_key,
        master_secret: creds.master_secret,
    };
    write_private(&path, &serde_json::to_vec_pretty(&demo)?)?;
    Ok(demo)
}

fn print_demo(d: &DemoApp, url: &str) {
    say!(
        "demo app: app_key={} master_secret={}",
        d.app_key,
        d.master_secret
    );
    say!("open {url}/console and sign in with that key and secret, or");
    say!("try:");
    say!(
        "  curl -s -u {}:{} \"{url}/v2/statistic/messages?time_unit=DAY&start=$(TZ=Asia/Shanghai date -d '-6 day' +%Y-%m-%d)&duration=7\"",
        d.app_key,
        d.master_secret
    );
    say!(
        "  curl -s -u {}:{} \"{url}/v2/messages?count=5&begin_time=$(TZ=Asia/Shanghai date -d '-1 hour' '+%Y-%m-%d+%H:%M:%S')&end_time=$(TZ=Asia/Shanghai date '+%Y-%m-%d+%H:%M:%S')\"",
        d.app_key,
        d.master_secret
    );
}
