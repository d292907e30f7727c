//! The `imreport` command: the server and its operator tools.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use imreport::{apps, export, import, loadgen, mirror, serve, settings};

// The writer and the decoders allocate many small strings; mimalloc is markedly faster at that
// than glibc's allocator (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Milliseconds mimalloc keeps freed memory before returning it to the OS. Its default (1000 ms
/// in mimalloc 3) kept the memtables fjall had just flushed resident for a second: peak RSS of a
/// 10M-message load ~350 MB, against ~285 MB at 100 ms (10 ms: ~260 MB, but ~10% slower
/// ingest: memory returned and faulted in again). Since memtables are 8 MiB, 300 ms peaks at
/// ~190-220 MB and ingests 1-20% faster than 100 ms (three alternating 1M loads). At 100M
/// messages over 60 days (session 17), 300 ms peaked at 304-308 MB, 100 ms at 282 MB but 23%
/// slower, 200 ms (with the writer's counter cache halved) at 291 MB as fast as 300.
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
const PURGE_DELAY_MS: std::ffi::c_long = 200;

fn tune_allocator() {
    set_purge_delay();
    disable_huge_pages();
}

fn set_purge_delay() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

fn disable_huge_pages() {
    // No transparent huge pages for this process (`MIMALLOC_ALLOW_THP=1` keeps them). mimalloc
    // asks for them on its arenas, and memory it purged (a flushed memtable, a decoded batch)
    // came back as a whole 2 MiB page zeroed at its first touch: a tenth of the writer's and the
    // decoders' time. Without them, 1M-message loads ran 4-20% faster at 15-25% lower peak RSS
    // (bench/LIMITS.md, Ingest). The flag is the process's, kept by every thread.
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Refused only by kernels without the call (before 3.15): then nothing changes.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

#[derive(Parser)]
#[command(
    name = "imreport",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("IMREPORT_COMMIT"), ")"),
    about = "Message archive and analytics server, wire-compatible with JMessage IM REST Report V2"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (on the embedded store, or on PostgreSQL with --store).
    Serve(Box<ServeArgs>),
    /// Manage apps (offline on the data dir, through a running server's admin API, or in PostgreSQL).
    App {
        #[command(subcommand)]
        action: Box<apps::AppAction>,
    },
    /// Generate synthetic IM traffic: to NDJSON/CSV, or posted to a server.
    Loadgen(Box<loadgen::LoadgenArgs>),
    /// Walk a history window through a server's Report V2 API; write its messages as NDJSON.
    Export(Box<export::ExportArgs>),
    /// Load NDJSON of ingest events or message objects (an export) into a server or a store.
    Import(Box<import::ImportArgs>),
    /// Copy an app's history from a Report V2 endpoint (JMessage, or another imreport), then
    /// follow it.
    Mirror(Box<mirror::MirrorArgs>),
    /// Write an archive of everything stored (apps, messages, user and group lifecycle) as of
    /// one instant: through a running server without stopping ingest, or from a stopped data
    /// dir, or from PostgreSQL.
    Backup(Box<imreport::backup::BackupArgs>),
    /// Load an archive into an empty data dir or PostgreSQL database (the server stopped).
    Restore(Box<imreport::backup::RestoreArgs>),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to standard output.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to standard output.
    Man,
    /// Settings helpers.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    settings: settings::SettingsArgs,
    /// Create a demo app filled with a week of generated traffic (first start), and print its
    /// credentials
    #[arg(long)]
    demo: bool,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print a commented example settings file.
    Example,
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    // Everything imreport writes (data dir, keys, archives, exports) is its owner's alone,
    // whatever umask it was started with.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::from_arg_matches(&settings::decorate(Cli::command()).get_matches())
        .unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Config {
            action: ConfigAction::Example,
        } => {
            print!("{}", settings::example());
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = settings::decorate(Cli::command());
            clap_complete::generate(shell, &mut cmd, "imreport", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let cmd = settings::decorate(Cli::command());
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            // Every subcommand's own page follows, so one file documents them all.
            for sub in settings::decorate(Cli::command()).get_subcommands() {
                clap_mangen::Man::new(sub.clone().name(format!("imreport-{}", sub.get_name())))
                    .render(&mut std::io::stdout())?;
            }
            Ok(())
        }
        Command::Serve(args) => {
            let settings = args.settings.resolve()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve::run(settings, args.demo))
        }
        Command::Loadgen(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(loadgen::run(*args)),
        Command::Export(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(export::run(*args)),
        Command::Import(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(import::run(*args)),
        Command::Mirror(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(mirror::run(*args)),
        Command::Backup(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(imreport::backup::backup(*args)),
        Command::Restore(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(imreport::backup::restore(*args)),
        Command::App { action } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(apps::run(*action)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index 15 is mimalloc's purge delay: the only option whose default is 1000 (ms), and
    /// `tune_allocator` sets it (unless the environment chose a value). Each test calls only
    /// its own half: `cargo test` runs them on threads of one process, and the other half
    /// setting the delay first read as a wrong default.
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads a plain integer option.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(get(), 1000, "mimalloc 3's default purge delay");
        set_purge_delay();
        assert_eq!(get(), PURGE_DELAY_MS);
    }

    /// `tune_allocator` turns transparent huge pages off for the process (unless the
    /// environment chose for mimalloc).
    #[test]
    fn transparent_huge_pages_are_turned_off() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            return;
        }
        disable_huge_pages();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }
}
