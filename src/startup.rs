//! Building and running the application: the listener, the ledger, the
//! workers (tickers, dispatcher, sweeper, notifier, pruner) and graceful
//! shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use fanfare_crawler::crawl::{Crawler, CrawlerConfig, ENV_EXTRA_CA};
use fanfare_crawler::netguard::NetPolicy;
use fanfare_crawler::proxy::ENV_PROXY_URL;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{InvokerKind, PageSource, Settings};
use crate::dispatch::{AwsLambda, Dispatcher, LambdaApi, LocalInvoker};
use crate::http::AppState;
use crate::ledger::Trigger;
use crate::notify::Notifier;
use crate::runs::{Runs, StartError};
use crate::schedule::FireHandler;
use crate::sources::Lister;

/// A built application, bound to its port, not yet running.
pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
    lambda: Option<Arc<dyn LambdaApi>>,
    local: Arc<LocalInvoker>,
    cancel: CancellationToken,
}

/// Options for [`Application::build_with`].
#[derive(Default)]
pub struct Overrides {
    /// Use this Lambda API instead of one built from the settings.
    pub lambda: Option<Arc<dyn LambdaApi>>,
    /// Crawler settings for the local invoker.
    pub crawler: Option<CrawlerConfig>,
}

impl Application {
    /// Binds the listener, connects to the ledger and applies migrations.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, Overrides::default()).await
    }

    /// [`Application::build`] with parts replaced (tests, `fanfare dev`).
    pub async fn build_with(mut settings: Settings, overrides: Overrides) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", settings.server.listen))?;
        let port = listener.local_addr()?.port();
        // A public_url with port 0 means "the port actually bound" (tests, dev).
        if settings.server.public_url.port() == Some(0) {
            let _ = settings.server.public_url.set_port(Some(port));
        }
        let settings = Arc::new(settings);

        let pool = crate::ledger::pool(
            secrecy::ExposeSecret::expose_secret(&settings.database.url),
            settings.database.max_connections,
        )
        .context("database.url")?;
        crate::ledger::migrate(&pool)
            .await
            .context("applying database migrations (is database.url reachable?)")?;
        let readers = crate::ledger::reader_pool(
            secrecy::ExposeSecret::expose_secret(&settings.database.url),
            settings.database.reader_connections,
        )
        .context("database.url")?;

        let needs_lambda = settings.schedules.iter().any(|s| {
            s.invoker == InvokerKind::Lambda || matches!(s.pages, PageSource::Lambda { .. })
        });
        let lambda = match overrides.lambda {
            Some(l) => Some(l),
            None if needs_lambda => {
                Some(Arc::new(AwsLambda::from_settings(&settings.lambda).await)
                    as Arc<dyn LambdaApi>)
            }
            None => None,
        };
        // Page sources are third-party URLs: the network guard refuses
        // private addresses unless `[security] allow_private_networks`.
        let source_policy = NetPolicy::allowing_private(settings.security.allow_private_networks);
        let http = source_policy
            .apply(
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .user_agent(concat!("fanfare/", env!("CARGO_PKG_VERSION"))),
                crate::sources::MAX_REDIRECTS,
            )
            .build()
            .context("building the HTTP client")?;
        let tracker = TaskTracker::new();
        let runs = Runs::new(
            pool,
            settings,
            Lister::new(http, lambda.clone()).with_policy(source_policy),
            tracker.clone(),
        );
        // The in-process crawler's reach follows [security]
        // allow_private_networks, also when a test passes its own crawler
        // settings: the config switch is the one truth.
        let mut crawler_config = CrawlerConfig {
            net: NetPolicy::allowing_private(runs.settings.security.allow_private_networks),
            browsers: runs.settings.local.browsers,
            ..overrides.crawler.unwrap_or_default()
        };
        // `proxy = "crawler"` means the crawler's own proxy: in-process,
        // the daemon's FANFARE_CRAWLER_PROXY_URL, as on Lambda; so with
        // the CA certificates of FANFARE_CRAWLER_EXTRA_CA.
        if crawler_config.proxy.is_none() || crawler_config.extra_roots_pem.is_empty() {
            let env = CrawlerConfig::from_lookup(|name| {
                [ENV_PROXY_URL, ENV_EXTRA_CA]
                    .contains(&name)
                    .then(|| std::env::var(name).ok())
                    .flatten()
            })?;
            crawler_config.proxy = crawler_config.proxy.or(env.proxy);
            if crawler_config.extra_roots_pem.is_empty() {
                crawler_config.extra_roots_pem = env.extra_roots_pem;
            }
        }
        let crawler =
            Crawler::new(crawler_config).context("building the local crawler's HTTP client")?;
        let cancel = CancellationToken::new();
        let local = Arc::new(LocalInvoker::new(
            crawler,
            tracker.clone(),
            runs.settings.local.concurrency,
            cancel.clone(),
        ));
        crate::http::metrics_handle();
        Ok(Self {
            listener,
            port,
            state: AppState::new(runs, readers),
            lambda,
            local,
            cancel,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The run lifecycle (for tests and `fanfare dev`).
    pub fn runs(&self) -> Arc<Runs> {
        self.state.runs.clone()
    }

    /// What the HTTP handlers share, for driving [`crate::http::router`]
    /// in-process (the callback fuzz test).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Cancelling this token stops the application gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Starts a run of `schedule` now, as the trigger API does.
    pub async fn trigger(&self, schedule: &str) -> anyhow::Result<Option<uuid::Uuid>> {
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        Ok(self
            .state
            .runs
            .start(schedule, now, Trigger::Manual)
            .await?)
    }

    /// Serves and works until the shutdown token is cancelled, then drains:
    /// readiness fails at once, tickers and dispatch stop, background work
    /// gets up to `shutdown_grace` while callbacks are still served, then
    /// the server closes.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            lambda,
            local,
            cancel,
            ..
        } = self;
        let runs = state.runs.clone();
        let grace = runs.settings.server.shutdown_grace;
        let workers = TaskTracker::new();
        // What a run frees (and what its keep-alive connections free when
        // they close) goes back to the system: the daemon idles at its own size.
        crate::memory::start_trimming();

        let http_stop = CancellationToken::new();
        let http_kill = CancellationToken::new();
        let mut server = tokio::spawn(crate::http::serve::serve(
            listener,
            crate::http::router(state.clone()),
            crate::http::serve::Limits::from(&runs.settings.server),
            http_stop.clone(),
            http_kill.clone(),
        ));

        workers.spawn(Dispatcher::new(runs.clone(), lambda, local).run(cancel.clone()));
        workers.spawn(crate::sweep::run(runs.clone(), cancel.clone()));
        workers.spawn(Notifier::new(runs.clone()).run(cancel.clone()));
        workers.spawn(crate::retention::run(
            runs.pool.clone(),
            runs.settings.clone(),
            cancel.clone(),
        ));
        workers.spawn(wake_on_notify(runs.clone(), cancel.clone()));
        let fire = Arc::new(Fire {
            runs: runs.clone(),
            cancel: cancel.clone(),
        });
        for schedule in &runs.settings.schedules {
            if let Some(cron) = &schedule.cron {
                let (runs, schedule, cron) = (runs.clone(), schedule.clone(), cron.clone());
                let (fire, cancel) = (fire.clone(), cancel.clone());
                workers.spawn(async move {
                    runs.catch_up(&schedule, &cron, Utc::now()).await;
                    crate::schedule::run_schedule(schedule.name.clone(), cron, fire, cancel).await
                });
            }
        }
        state.health.scheduler_running.store(true, Ordering::SeqCst);
        tracing::info!(
            port = state_port(&runs),
            schedules = runs.settings.schedules.len(),
            "fanfare is serving"
        );

        cancel.cancelled().await;
        state.health.shutting_down.store(true, Ordering::SeqCst);
        tracing::info!(grace = ?grace, "shutting down");
        let deadline = tokio::time::Instant::now() + grace;
        workers.close();
        runs.tracker.close();
        if tokio::time::timeout_at(deadline, async {
            workers.wait().await;
            runs.tracker.wait().await;
        })
        .await
        .is_err()
        {
            tracing::warn!("background work did not finish within the shutdown grace; the sweeper of a later start will retry it");
        }
        state
            .health
            .scheduler_running
            .store(false, Ordering::SeqCst);
        http_stop.cancel();
        // Connections finish their request in flight and close; a second
        // after the deadline the ones still open are closed.
        let served =
            match tokio::time::timeout_at(deadline + Duration::from_secs(1), &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    http_kill.cancel();
                    server.await
                }
            };
        served.context("the HTTP server task")?;
        runs.pool.close().await;
        state.readers.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

fn state_port(runs: &Runs) -> u16 {
    runs.settings
        .server
        .public_url
        .port_or_known_default()
        .unwrap_or(0)
}

/// Turns cron fires into runs.
struct Fire {
    runs: Arc<Runs>,
    cancel: CancellationToken,
}

impl FireHandler for Fire {
    /// Starts the fire's run, trying again with backoff while the ledger is
    /// unavailable (the run's identity is the fire, so a try that did get
    /// through is not repeated). The ticker waits meanwhile and fires what
    /// fell due after; a fire still not started at shutdown is one the
    /// next start catches up, per the schedule's catch-up policy.
    async fn fire(&self, schedule: &str, scheduled_for: DateTime<Utc>) {
        let Some(config) = self.runs.settings.schedule(schedule) else {
            return;
        };
        let mut tries = 0i32;
        loop {
            let e = match self.runs.fire(config, scheduled_for, Trigger::Cron).await {
                Ok(_) => return,
                Err(e) => e,
            };
            let transient = matches!(&e, StartError::Ledger(e) if crate::ledger::is_unavailable(e));
            if !transient {
                tracing::error!(schedule, %scheduled_for, error = %e, "could not start the run for this fire");
                return;
            }
            tries += 1;
            metrics::counter!("fanfare_fires_retried_total", "schedule" => schedule.to_string())
                .increment(1);
            tracing::warn!(schedule, %scheduled_for, tries, error = %e, "could not start the run for this fire yet; trying again");
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    tracing::warn!(schedule, %scheduled_for, "shutting down before this fire's run could start; the next start catches it up");
                    return;
                }
                _ = tokio::time::sleep(crate::lifecycle::backoff(tries.min(5))) => {}
            }
        }
    }
}

/// Wakes this replica's dispatcher and notifier when another replica's
/// transaction NOTIFYs (pages listed, a notification queued), so replicas
/// need not wait for their polling interval; polling stays the fallback.
async fn wake_on_notify(runs: Arc<Runs>, cancel: CancellationToken) {
    let mut failures = 0;
    loop {
        let listener = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&runs.pool).await?;
            listener.listen(crate::ledger::WAKE_CHANNEL).await?;
            loop {
                let n = listener.recv().await?;
                match n.payload() {
                    crate::ledger::WAKE_NOTIFY => runs.wake_notify.notify_one(),
                    _ => runs.wake_dispatch.notify_one(),
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            result = listener => {
                failures += 1;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "lost the wake-up listener; polling meanwhile");
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(crate::lifecycle::backoff(failures.min(5))) => {}
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
