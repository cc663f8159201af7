//! Hot-reload triggers besides `POST /admin/reload`: changes to the config file (or a prompt
//! file it reads) and SIGHUP. All of them call [`Shared::reload`], which validates fully and
//! swaps atomically or changes nothing.
//!
//! The watcher watches the *folders* of those files, not the files: editors save by writing a
//! new file and renaming it over the old one, and a Kubernetes ConfigMap volume swaps a `..data`
//! symlink, and either way a watch on the file itself would stay on the old inode. Any event in
//! a folder leads to a re-read; a reload happens only when the files' contents changed, so
//! unrelated files in the folder and repeated events cost a hash of a few small files. A slow
//! poll backs the watcher up on filesystems without inotify (some network and overlay mounts).

use crate::state::Shared;
use async_trait::async_trait;
use notify::Watcher;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events arrive in bursts (truncate + write, create + rename); one reload follows the burst.
const SETTLE: Duration = Duration::from_millis(150);
/// The fallback poll.
const POLL: Duration = Duration::from_secs(5);

pub struct ConfigWatcher {
    pub shared: Arc<Shared>,
    /// Reload when the files change.
    pub files: bool,
    /// Reload on SIGHUP too (the process's own gateway only: signals are process-wide).
    pub sighup: bool,
}

/// A digest of the files' contents, read through symlinks; a missing file counts as such.
fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(bytes) => {
                h.update(b"\x01");
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(_) => h.update(b"\x00"),
        }
    }
    h.finalize().into()
}

/// The folders to watch: each file's own folder, and the folder of what it resolves to when
/// it is a symlink (a ConfigMap's `gateway.yaml -> ..data/gateway.yaml`), so both a swapped
/// link and a file edited in place behind it are seen.
fn folders(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let parent = |f: &std::path::Path| match f.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut out = BTreeSet::new();
    for f in files {
        out.insert(parent(f));
        if let Ok(real) = std::fs::canonicalize(f) {
            out.insert(parent(&real));
        }
    }
    out
}

/// Points `watcher` at exactly `want`, given what it watches now.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    watching: &mut BTreeSet<PathBuf>,
    want: BTreeSet<PathBuf>,
) {
    for gone in watching.difference(&want) {
        let _ = watcher.unwatch(gone);
    }
    for new in want.difference(watching) {
        if let Err(e) = watcher.watch(new, notify::RecursiveMode::NonRecursive) {
            log::warn!(
                "cannot watch {} for config changes ({e}); changes are still picked up within {POLL:?}",
                new.display()
            );
        }
    }
    *watching = want;
}

impl ConfigWatcher {
    fn sources(&self) -> Vec<PathBuf> {
        self.shared.snapshot().config.sources.clone()
    }

    /// Reloads when the files changed since `last`; returns the new fingerprint.
    fn check(&self, last: [u8; 32], trigger: &str) -> [u8; 32] {
        let now = fingerprint(&self.sources());
        if now == last {
            return last;
        }
        // Failed or not, this content was tried: it is not retried until it changes again.
        let _ = self.shared.reload(trigger);
        // A successful reload may read other prompt files; fingerprint what is now in use.
        fingerprint(&self.sources())
    }

    async fn run(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watcher = None;
        if self.files {
            match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = tx.send(());
                }
            }) {
                Ok(w) => watcher = Some(w),
                Err(e) => {
                    log::warn!(
                        "no file watcher ({e}); config changes are picked up within {POLL:?}"
                    )
                }
            }
        }
        let mut watching = BTreeSet::new();
        if let Some(w) = &mut watcher {
            rewatch(w, &mut watching, folders(&self.sources()));
        }
        let mut hup = if self.sighup {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| log::warn!("SIGHUP reload unavailable: {e}"))
                .ok()
        } else {
            None
        };
        let mut last = fingerprint(&self.sources());
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                    last = self.check(last, "file change");
                }
                _ = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    // An explicit request: reload even if the files look the same.
                    let _ = self.shared.reload("SIGHUP");
                    last = fingerprint(&self.sources());
                }
                _ = poll.tick(), if self.files => {
                    last = self.check(last, "file change (poll)");
                }
            }
            if let Some(w) = &mut watcher {
                rewatch(w, &mut watching, folders(&self.sources()));
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await;
    }
}
