//! SIGHUP (`systemctl reload`, logrotate's postrotate): reopens the log file, then reads the
//! configuration again from the sources the member started with and applies what can change
//! at run time ([`crate::config::RELOADABLE_KEYS`]: the log level and the log file). A
//! configuration that does not load or validate, or names unusable certificates, is refused
//! whole and nothing changes; a changed key that needs a restart is named in a warning (on
//! every reload until the member restarts). Values are never logged, except the log level's.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Config, RELOADABLE_KEYS, Settings};

/// Waits for SIGHUP until shutdown; `started` is the configuration the member runs with.
pub(super) async fn reload_on_hangup(mut shutdown: watch::Receiver<bool>, started: Arc<Config>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; the log file will not be reopened");
        return;
    };
    // What the sources say now is what the member runs with, unless the file changed in the
    // moment since the start (or the member was not started from this process's arguments):
    // then there is no trustworthy baseline to tell changes from, and SIGHUP only reopens.
    let mut running = match Config::reload_from_env_and_args() {
        Ok((config, settings, _)) if config == *started => Some(settings),
        Ok(_) => {
            tracing::warn!(
                "the configuration changed since the start; restart to apply it (SIGHUP only \
                 reopens the log file until then)"
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot read the configuration again; SIGHUP only reopens the log file"
            );
            None
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                crate::telemetry::request_log_reopen();
                tracing::info!("received SIGHUP; reopened the log file");
                if let Some(running) = running.as_mut() {
                    reload(running);
                }
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Reads, checks and applies the configuration; `running` follows what was applied.
fn reload(running: &mut Settings) {
    let (config, settings) = match Config::reload_from_env_and_args() {
        Ok((config, settings, _warnings)) => (config, settings),
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused; nothing changed");
            return;
        }
    };
    if let Err(e) = check_certificates(&config) {
        tracing::error!(error = %e, "configuration reload refused; nothing changed");
        return;
    }
    let mut changed = running.changed_keys(&settings);
    // The level changes before the log file moves, so no line at the old level is written
    // after the move into the new file.
    changed.sort_by_key(|key| key != "log-level");
    if changed.is_empty() {
        tracing::info!("configuration reloaded; nothing changed");
        return;
    }
    // Everything is applied before anything is reported, so the whole report lands in the new
    // log file at the new level: no line of the old level follows it in the new file.
    let mut outcomes = Vec::with_capacity(changed.len());
    for key in changed {
        let applied = match key.as_str() {
            _ if !RELOADABLE_KEYS.contains(&key.as_str()) => Err(None),
            "log-level" => crate::telemetry::set_level(config.log_level).map_err(Some),
            _ => {
                crate::telemetry::set_log_file(crate::telemetry::log_output(&config)).map_err(Some)
            }
        };
        if applied.is_ok() {
            running.adopt(&settings, &key);
        }
        outcomes.push((key, applied));
    }
    for (key, applied) in outcomes {
        match applied {
            Ok(()) if key == "log-level" => {
                tracing::info!(key = %key, value = config.log_level.as_str(), "applied {key}")
            }
            Ok(()) => tracing::info!(key = %key, "applied {key}"),
            Err(None) => tracing::warn!(
                key = %key,
                "configuration key {key} changed; it takes effect after a restart"
            ),
            Err(Some(reason)) => tracing::warn!(
                key = %key,
                reason = %reason,
                "configuration key {key} changed; it takes effect after a restart"
            ),
        }
    }
}

/// The certificate and key files the new configuration names must be usable (the pairs in use
/// are re-read on the next handshake after their files change, whatever the reload does).
fn check_certificates(config: &Config) -> Result<(), crate::tls::TlsError> {
    let client_https =
        crate::tls::any_https(&[&config.listen_client_urls, &config.listen_metrics_urls]);
    if client_https {
        crate::tls::check(&config.client_tls)?;
    }
    if config.peer_https() {
        crate::tls::check(&config.peer_tls)?;
    }
    Ok(())
}
