//! Settings, declared once. Each is one line of the [`settings!`] table below: its name, type,
//! default and description. From that line come the command-line flag (`--name-with-dashes`),
//! the environment variable (`IMREPORT_NAME`), the key of the TOML file, the default, the help
//! text, and its entry in `imreport config example`; `docs/API.md`'s table is tested against it.
//! Precedence: flag > environment > file (`--config`) > default.

use anyhow::{Context, Result};
use clap::Args;
use imreport_domain::event::IngestLimits;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Declares the settings: a [`Layer`] (what one source gives: every field optional, read by
/// clap from flags and the environment and by serde from the file), the resolved [`Settings`]
/// with their defaults, and [`SETTINGS`], the names and descriptions in order.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])+ $name:ident : $ty:ty = $default:expr; )*) => {
        /// What one source of settings gives; unset fields fall through to the next source.
        #[derive(Debug, Default, Clone, Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Layer {
            $( $(#[doc = $doc])+ #[arg(long)] pub $name: Option<$ty>, )*
        }

        /// Settings with every default applied.
        #[derive(Debug, Clone, Serialize)]
        pub struct Settings {
            $( $(#[doc = $doc])+ pub $name: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Settings { $( $name: $default, )* }
            }
        }

        impl Layer {
            /// This layer, with `under` filling what it leaves unset.
            pub fn or(self, under: Layer) -> Layer {
                Layer { $( $name: self.$name.or(under.$name), )* }
            }

            fn with_defaults(self) -> Settings {
                let d = Settings::default();
                Settings { $( $name: self.$name.unwrap_or(d.$name), )* }
            }
        }

        /// Every setting's name and description, in declaration order.
        pub const SETTINGS: &[(&str, &str)] = &[
            $( (stringify!($name), concat!($($doc, "\n"),+)), )*
        ];
    };
}

settings! {
    /// Data directory of the embedded store (with PostgreSQL it holds only admin.json and
    /// demo.json).
    data_dir: PathBuf = "./imreport-data".into();
    /// Where data lives: `embedded` (one process, the data dir), or a PostgreSQL URL such as
    /// postgres://user@host:5432/db, shared by any number of stateless servers.
    store: String = "embedded".into();
    /// PostgreSQL schema for imreport's tables, created if missing (empty: the URL's
    /// search_path, usually public).
    pg_schema: String = String::new();
    /// Most PostgreSQL connections this server opens (to the primary, and to each standby).
    pg_pool_size: usize = 16;
    /// PostgreSQL hot standbys (streaming replicas of the store's database) to read history
    /// and statistics from, as postgres:// URLs separated by spaces; ingest and upkeep stay
    /// on the primary (empty: every read on the primary).
    pg_standbys: String = String::new();
    /// Seconds a standby may lag the primary and still serve first pages and statistics; a
    /// next page waits for a standby to replay what its walk saw, or reads the primary.
    pg_standby_max_lag_secs: f64 = 5.0;
    /// Address of the public API (Report V2, ingest, health).
    listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8080));
    /// Address of the admin API; keep it on loopback (port 0: a free one). Its address and
    /// bearer token are written to DATA_DIR/admin.json (mode 0600) for `imreport app`.
    admin_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    /// IANA time zone in which clients write times and statistics are bucketed.
    report_tz: String = "Asia/Shanghai".into();
    /// Seconds a history cursor stays valid after it is issued.
    cursor_ttl_secs: u64 = 120;
    /// Secret sealing cursors (16+ characters); servers sharing it continue each other's
    /// cursors (empty: a random key kept in DATA_DIR/cursor.key, or in the database).
    cursor_key: String = String::new();
    /// Days of messages and statistics kept.
    retention_days: u32 = 60;
    /// A user's, group's or chatroom's hour gets its own message counter once it holds this
    /// many messages; quieter hours are counted from their index entries when a first page
    /// asks for its total (lower: more counters to write; higher: more entries to count).
    busy_hour: u64 = imreport_store::BUSY_HOUR;
    /// Most events in one ingest request.
    max_events: usize = IngestLimits::default().max_events;
    /// Largest ingest request body, in bytes.
    max_body_bytes: usize = IngestLimits::default().max_body_bytes;
    /// Largest msg_body, in bytes.
    max_msg_body_bytes: usize = IngestLimits::default().max_msg_body_bytes;
    /// Ingest requests that may wait for the writer; past this ingest answers 503.
    queue_depth: usize = 256;
    /// Ingest requests read, decoded and stored at once, shared fairly between apps (each may
    /// hold about 3 x max_body_bytes).
    ingest_concurrency: usize = 8;
    /// How many nice steps (0-19) below the rest of the process ingest's CPU work runs:
    /// decoding bodies, and in the embedded store its writer, fsync and merge threads, so that
    /// history and statistics requests take the cores first while ingest keeps them busy (0:
    /// the same priority). Decoding runs 9 steps lower still, below the writer.
    ingest_nice: i32 = imreport_store::priority::DEFAULT_INGEST_NICE;
    /// History pages built at once, shared fairly between apps.
    page_concurrency: usize = 8;
    /// The embedded store's block cache (MiB): blocks recently read, decompressed, shared by
    /// every keyspace. More keeps more of what pages read in memory; the process's peak memory
    /// grows by as much.
    block_cache_mb: u64 = imreport_store::embedded::CACHE_BYTES / (1024 * 1024);
    /// Memory (MiB) for history pages built and not yet sent, shared fairly between apps.
    response_buffer_mb: u64 = 256;
    /// Requests per app per rate window; 0 turns rate limiting off.
    rate_limit: u32 = 0;
    /// Length of the rate window, in seconds.
    rate_limit_window_secs: u32 = 60;
    /// Seconds a connection has to begin a request, and each request to send its headers.
    header_read_timeout_secs: f64 = 10.0;
    /// Seconds a client has to send an ingest body.
    body_read_timeout_secs: f64 = 30.0;
    /// Slowest ingest body accepted, in bytes per second on average from body_grace_secs after
    /// the request head.
    min_body_rate: u64 = 32 * 1024;
    /// Seconds an ingest body may take before min_body_rate applies.
    body_grace_secs: f64 = 2.0;
    /// Seconds a request waits for an ingest slot or its share of page building and memory
    /// before it is answered 503.
    busy_wait_secs: f64 = 5.0;
    /// Seconds a connection may stay open with no request in progress.
    idle_timeout_secs: f64 = 75.0;
    /// Seconds a response may go unread before it is dropped with its connection.
    send_timeout_secs: f64 = 30.0;
    /// Most connections open at once; at the cap the one idle longest is closed to admit a new
    /// one (lowered to fit the open-file limit, with a warning).
    max_connections: usize = 10_000;
    /// Free disk space (MiB) below which ingest answers 503 instead of writing.
    min_free_disk_mb: u64 = 256;
    /// Address of the Prometheus metrics listener (GET /metrics), e.g. 127.0.0.1:9464; keep it
    /// off the public network (empty: no metrics; port 0: a free one).
    metrics_listen: String = String::new();
    /// Log lines as `text` (for people) or `json` (one object a line, for log collectors).
    log_format: String = "text".into();
    /// Seconds a console sign-in lasts.
    console_session_secs: f64 = 8.0 * 3600.0;
    /// NATS server to consume ingest events from through JetStream, e.g.
    /// nats://127.0.0.1:4222 (empty: no stream intake).
    nats_url: String = String::new();
    /// JetStream stream holding the ingest subjects (created when missing); dead letters go
    /// to a stream named after it with _DEAD appended.
    nats_stream: String = "IMREPORT_INGEST".into();
    /// Events for an app are published to PREFIX.<app key>.
    nats_subject_prefix: String = "imreport.ingest".into();
    /// Messages that can never be stored are published to PREFIX.<app key>, with their error.
    nats_dead_letter_prefix: String = "imreport.dead".into();
    /// Durable pull consumer's name; servers sharing it share the work.
    nats_consumer: String = "imreport".into();
    /// Most NATS messages taken and stored at once.
    nats_batch: usize = 256;
    /// Seconds a NATS message taken and not yet acknowledged waits before it is delivered
    /// again (to another server, or to this one after a crash); set when the consumer is
    /// created.
    nats_ack_wait_secs: f64 = 30.0;
}

/// The settings every command that opens the store takes: a file, and any setting as a flag or
/// an environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// TOML settings file (see `imreport config example`)
    #[arg(long, env = "IMREPORT_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub layer: Layer,
}

impl SettingsArgs {
    /// Flags and environment over the file over the defaults, checked.
    pub fn resolve(self) -> Result<Settings> {
        let file: Layer = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid settings file {}", path.display()))?
            }
            None => Layer::default(),
        };
        let s = self.layer.or(file).with_defaults();
        s.check()?;
        Ok(s)
    }
}

impl Settings {
    fn check(&self) -> Result<()> {
        anyhow::ensure!(
            self.ingest_concurrency >= 1
                && self.page_concurrency >= 1
                && self.max_connections >= 1
                && self.response_buffer_mb >= 1
                && self.block_cache_mb >= 1,
            "ingest_concurrency, page_concurrency, max_connections, response_buffer_mb and block_cache_mb must be at least 1"
        );
        anyhow::ensure!(self.pg_pool_size >= 2, "pg_pool_size must be at least 2");
        anyhow::ensure!(self.busy_hour >= 1, "busy_hour must be at least 1");
        anyhow::ensure!(
            (0..=19).contains(&self.ingest_nice),
            "ingest_nice must be 0 to 19"
        );
        anyhow::ensure!(
            self.pg_standby_max_lag_secs.is_finite() && self.pg_standby_max_lag_secs >= 0.0,
            "pg_standby_max_lag_secs must be a number of seconds, 0 or more"
        );
        for url in self.standby_urls() {
            anyhow::ensure!(
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "pg_standbys takes postgres:// URLs separated by spaces, not {url:?}"
            );
        }
        anyhow::ensure!(
            self.standby_urls().is_empty()
                || matches!(self.store_choice()?, StoreChoice::Postgres { .. }),
            "pg_standbys needs the PostgreSQL store (store = a postgres:// URL)"
        );
        anyhow::ensure!(
            self.retention_days >= 1,
            "retention_days must be at least 1"
        );
        anyhow::ensure!(
            self.cursor_ttl_secs >= 1,
            "cursor_ttl_secs must be at least 1"
        );
        anyhow::ensure!(
            self.max_events >= 1 && self.max_body_bytes >= 1024,
            "ingest limits are too small"
        );
        for (name, secs) in [
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("body_read_timeout_secs", self.body_read_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("send_timeout_secs", self.send_timeout_secs),
            ("body_grace_secs", self.body_grace_secs),
            ("busy_wait_secs", self.busy_wait_secs),
            ("nats_ack_wait_secs", self.nats_ack_wait_secs),
            ("console_session_secs", self.console_session_secs),
        ] {
            anyhow::ensure!(
                secs.is_finite() && (0.001..=86_400.0).contains(&secs),
                "{name} must be between 0.001 and 86400 seconds"
            );
        }
        self.store_choice()?;
        if !self.metrics_listen.is_empty() {
            self.metrics_listen
                .parse::<SocketAddr>()
                .map_err(|e| anyhow::anyhow!("metrics_listen must be host:port ({e})"))?;
        }
        anyhow::ensure!(
            self.log_format == "text" || self.log_format == "json",
            "log_format must be text or json"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.nats_batch),
            "nats_batch must be 1..=10000"
        );
        let token = |v: &str| {
            !v.is_empty()
                && !v.contains(['*', '>', ' '])
                && !v.starts_with('.')
                && !v.ends_with('.')
        };
        anyhow::ensure!(
            token(&self.nats_subject_prefix) && token(&self.nats_dead_letter_prefix),
            "nats_subject_prefix and nats_dead_letter_prefix must be NATS subjects without wildcards"
        );
        Ok(())
    }

    /// The stream intake the settings ask for, if any.
    pub fn nats(&self) -> Option<imreport_intake::nats::NatsConfig> {
        (!self.nats_url.is_empty()).then(|| imreport_intake::nats::NatsConfig {
            url: self.nats_url.clone(),
            stream: self.nats_stream.clone(),
            subject_prefix: self.nats_subject_prefix.clone(),
            dead_letter_prefix: self.nats_dead_letter_prefix.clone(),
            consumer: self.nats_consumer.clone(),
            ack_wait: Settings::secs(self.nats_ack_wait_secs),
        })
    }

    /// The standbys `pg_standbys` names.
    pub fn standby_urls(&self) -> Vec<String> {
        self.pg_standbys
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Which store the settings name.
    pub fn store_choice(&self) -> Result<StoreChoice> {
        StoreChoice::parse(&self.store, &self.pg_schema)
    }

    /// The ingest limits the settings give.
    pub fn ingest_limits(&self) -> IngestLimits {
        IngestLimits {
            max_events: self.max_events,
            max_body_bytes: self.max_body_bytes,
            max_msg_body_bytes: self.max_msg_body_bytes,
        }
    }

    /// A duration setting given in (possibly fractional) seconds.
    pub fn secs(secs: f64) -> std::time::Duration {
        std::time::Duration::from_secs_f64(secs)
    }

    /// A size setting given in MiB, in bytes (saturating: a huge value means "no limit", not a
    /// wrapped small one).
    pub fn mib(mb: u64) -> u64 {
        mb.saturating_mul(1024 * 1024)
    }
}

/// Which store a server (or `imreport app`) works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    Embedded,
    Postgres { url: String, schema: Option<String> },
}

impl StoreChoice {
    /// `embedded` or `postgres`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreChoice::Embedded => "embedded",
            StoreChoice::Postgres { .. } => "postgres",
        }
    }

    pub fn parse(store: &str, pg_schema: &str) -> Result<StoreChoice> {
        match store {
            "embedded" => Ok(StoreChoice::Embedded),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(StoreChoice::Postgres {
                    url: url.to_owned(),
                    schema: (!pg_schema.is_empty()).then(|| pg_schema.to_owned()),
                })
            }
            _ => anyhow::bail!(
                "store must be `embedded` or a PostgreSQL URL (postgres://user@host:5432/db)"
            ),
        }
    }
}

/// A setting's default as it is written in the TOML file; `None` for an empty string (unset).
pub fn default_toml(name: &str) -> Option<String> {
    let defaults = toml::Value::try_from(Settings::default()).expect("settings serialize");
    match defaults.get(name).expect("every setting has a default") {
        toml::Value::String(s) if s.is_empty() => None,
        v => Some(v.to_string()),
    }
}

/// Gives every settings flag of `cmd` (and its subcommands) its environment variable
/// (`IMREPORT_` and the name in upper case) and its default in the help, from [`SETTINGS`].
pub fn decorate(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_subcommands(decorate);
    let mut cmd = cmd;
    for (name, _) in SETTINGS {
        if cmd.get_arguments().any(|a| a.get_id() == *name) {
            cmd = cmd.mut_arg(*name, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let default = default_toml(name).unwrap_or_else(|| "unset".into());
                a.env(format!("IMREPORT_{}", name.to_uppercase()))
                    .hide_env_values(true)
                    .help(format!("{help} [default: {default}]"))
            });
        }
    }
    cmd
}

/// `imreport config example`: every setting with its description and default, commented where
/// unset by default.
pub fn example() -> String {
    let mut out = String::from(
        "# imreport settings file: `imreport serve --config imreport.toml`.\n\
         # Every setting is optional. Precedence: command-line flag > IMREPORT_* environment\n\
         # variable (the name in upper case, e.g. IMREPORT_RETENTION_DAYS) > this file > the\n\
         # default shown.\n",
    );
    for (name, doc) in SETTINGS {
        out.push('\n');
        for line in doc.lines() {
            out.push_str(&format!("#{}\n", if line.is_empty() { "" } else { line }));
        }
        match default_toml(name) {
            Some(v) => out.push_str(&format!("{name} = {v}\n")),
            None => out.push_str(&format!("# {name} = \"\"\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SettingsArgs,
    }

    fn parse(argv: &[&str]) -> Settings {
        let matches = decorate(Cli::command())
            .try_get_matches_from(std::iter::once("imreport").chain(argv.iter().copied()))
            .unwrap();
        Cli::from_arg_matches(&matches)
            .unwrap()
            .args
            .resolve()
            .unwrap()
    }

    #[test]
    fn sizes_in_mib_become_bytes_and_saturate() {
        assert_eq!(Settings::mib(3), 3 * 1024 * 1024);
        assert_eq!(Settings::mib(u64::MAX / 1024), u64::MAX);
    }

    #[test]
    fn the_example_parses_to_the_defaults_and_flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imreport.toml");
        let ex = example();
        std::fs::write(&path, &ex).unwrap();
        let s = parse(&["--config", path.to_str().unwrap()]);
        assert_eq!(
            toml::Value::try_from(&s).unwrap(),
            toml::Value::try_from(Settings::default()).unwrap(),
            "the example holds every default"
        );
        std::fs::write(
            &path,
            ex.replace("retention_days = 60", "retention_days = 30"),
        )
        .unwrap();
        let s = parse(&["--config", path.to_str().unwrap()]);
        assert_eq!(
            (s.retention_days, s.report_tz.as_str()),
            (30, "Asia/Shanghai")
        );
        let s = parse(&["--config", path.to_str().unwrap(), "--retention-days", "7"]);
        assert_eq!(s.retention_days, 7);
        assert_eq!(s.store_choice().unwrap(), StoreChoice::Embedded);
        let s = parse(&["--send-timeout-secs", "0.25"]);
        assert_eq!(Settings::secs(s.send_timeout_secs).as_millis(), 250);
    }

    #[test]
    fn every_setting_has_its_flag_environment_variable_and_default_in_the_help() {
        let mut cmd = decorate(Cli::command());
        let help = cmd.render_long_help().to_string();
        for (name, _) in SETTINGS {
            let flag = format!("--{}", name.replace('_', "-"));
            let env = format!("IMREPORT_{}", name.to_uppercase());
            assert!(help.contains(&flag), "{flag}");
            assert!(help.contains(&env), "{env}");
        }
        assert!(help.contains("[default: 10000]"), "{help}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<Layer>("retention_dayz = 3").is_err());
    }

    #[test]
    fn store_is_embedded_or_a_postgres_url() {
        assert_eq!(
            StoreChoice::parse("postgres://u@h/db", "s").unwrap(),
            StoreChoice::Postgres {
                url: "postgres://u@h/db".into(),
                schema: Some("s".into())
            }
        );
        assert!(StoreChoice::parse("mysql://u@h/db", "").is_err());
    }

    #[test]
    fn standbys_are_postgres_urls_for_the_postgres_store() {
        let resolve = |argv: &[&str]| {
            let matches = decorate(Cli::command())
                .try_get_matches_from(std::iter::once("imreport").chain(argv.iter().copied()))
                .unwrap();
            Cli::from_arg_matches(&matches).unwrap().args.resolve()
        };
        let s = resolve(&[
            "--store",
            "postgres://u@db1/x",
            "--pg-standbys",
            " postgres://u@db2/x  postgresql://u@db3,db4/x ",
        ])
        .unwrap();
        assert_eq!(
            s.standby_urls(),
            ["postgres://u@db2/x", "postgresql://u@db3,db4/x"]
        );
        let err = |argv: &[&str]| resolve(argv).unwrap_err().to_string();
        assert!(
            err(&["--pg-standbys", "postgres://u@db2/x"]).contains("needs the PostgreSQL store")
        );
        assert!(
            err(&["--store", "postgres://u@db1/x", "--pg-standbys", "host=db2"])
                .contains("postgres:// URLs")
        );
        assert!(
            err(&[
                "--store",
                "postgres://u@db1/x",
                "--pg-standby-max-lag-secs=-1"
            ])
            .contains("0 or more")
        );
    }
}
