//! Retention: the pruner deletes finished runs past `keep_runs_for` with
//! every row that names them, and never the run change detection compares
//! with, a run with an undelivered notification, or an open run.
//!
//! Runs are made by the real application over the recording Lambda
//! stand-in and finish by their reports; their age is then set in the
//! ledger (`finished_at` in the past), the one thing a test cannot wait for.

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use fanfare::retention::{prune_once, Pruned};
use fanfare::Settings;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::*;

/// Beyond the default `keep_runs_for` of 90 days.
const OLD: Duration = Duration::from_secs(91 * 24 * 3600);

/// An application whose schedules crawl through the recording stand-in and
/// notify one webhook receiver.
struct Ledger {
    app: TestApp,
    lambda: Arc<RecordingLambda>,
    receiver: Receiver,
    /// The configuration after the kit's sections: `[retention]`, schedules.
    toml: String,
    pages: usize,
}

impl Ledger {
    /// Schedules `(name, extra keys)` of `pages` pages each; `rest` goes
    /// before them (a `[retention]` section); the receiver fails its first
    /// `fail_first` deliveries.
    async fn start(
        schedules: &[(&str, &str)],
        pages: usize,
        rest: &str,
        fail_first: usize,
    ) -> Self {
        let receiver = Receiver::start(fail_first).await;
        let mut toml = rest.to_string();
        for (name, extra) in schedules {
            let extra = format!("overlap = \"allow\"\n{extra}");
            toml.push_str(&lambda_schedule(name, pages, Some(&receiver), &extra));
        }
        let lambda = Arc::new(RecordingLambda::default());
        let app = TestApp::builder()
            .toml(&toml)
            .lambda(lambda.clone())
            .spawn()
            .await;
        Self {
            app,
            lambda,
            receiver,
            toml,
            pages,
        }
    }

    /// The application's settings, for a pruner the test runs itself.
    fn settings(&self) -> Settings {
        Settings::from_toml(&config_toml(&self.app.database, &self.toml)).unwrap()
    }

    /// Triggers `schedule` and waits until each page of the run was
    /// dispatched; returns the run and its requests.
    async fn dispatched(
        &self,
        schedule: &str,
    ) -> (Uuid, Vec<fanfare_crawler::contract::CrawlRequest>) {
        let run = self.app.trigger(schedule).await;
        let id = run.to_string();
        let what = format!("the {} pages of run {run} dispatched", self.pages);
        let requests = self
            .lambda
            .wait_until(secs(30), &what, |got| {
                got.iter().filter(|r| r.run_id == id).count() >= self.pages
            })
            .await;
        (
            run,
            requests.into_iter().filter(|r| r.run_id == id).collect(),
        )
    }

    /// A run of `schedule` whose first `gone` pages answer 404 and the
    /// others succeed, finished; with `delivered`, its notification too.
    async fn finished_run(&self, schedule: &str, gone: usize, delivered: bool) -> Uuid {
        let (run, requests) = self.dispatched(schedule).await;
        for (i, r) in requests.iter().enumerate() {
            let report = if i < gone {
                failed(r, false)
            } else {
                succeeded(r)
            };
            self.app.report_recorded(r, &report).await;
        }
        self.app.wait_finished(run, secs(10)).await;
        if delivered {
            self.receiver.wait_delivered(run, secs(10)).await;
            eventually(
                "the notification recorded as delivered",
                secs(10),
                || async {
                    let pending = self
                        .count("notifications", "status <> 'delivered' and run_id", run)
                        .await;
                    holds(pending == 0, format!("{pending} not delivered"))
                },
            )
            .await;
        }
        run
    }

    /// Sets the runs' `finished_at` to `ago` before now.
    async fn age(&self, runs: &[Uuid], ago: Duration) {
        sqlx::query(
            "update runs set finished_at = now() - make_interval(secs => $2) where id = any($1)",
        )
        .bind(runs)
        .bind(ago.as_secs_f64())
        .execute(&self.app.pool)
        .await
        .unwrap();
    }

    /// Rows of `table` where `column = run` (`column` may carry a
    /// condition before it: `status = 'x' and run_id`).
    async fn count(&self, table: &str, column: &str, run: Uuid) -> i64 {
        count(&self.app.pool, table, column, run).await
    }

    /// Every row naming `run`: (runs, pages, page_changes, notifications,
    /// run_hosts).
    async fn rows(&self, run: Uuid) -> [i64; 5] {
        [
            self.count("runs", "id", run).await,
            self.count("pages", "run_id", run).await,
            self.count("page_changes", "run_id", run).await,
            self.count("notifications", "run_id", run).await,
            self.count("run_hosts", "run_id", run).await,
        ]
    }

    /// One pass of a pruner of the application's settings, on the test's pool.
    async fn prune(&self) -> Pruned {
        prune_once(&self.app.pool, &self.settings(), &CancellationToken::new())
            .await
            .unwrap()
    }
}

async fn count(pool: &PgPool, table: &str, column: &str, run: Uuid) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table} where {column} = $1"))
        .bind(run)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn old_finished_runs_go_with_their_pages_changes_notifications_and_hosts() {
    let ledger = Ledger::start(&[("shop", "")], 4, "", 0).await;
    let first = ledger.finished_run("shop", 0, true).await;
    // Two pages gone since the first run, and back (new) in the third.
    let second = ledger.finished_run("shop", 2, true).await;
    let third = ledger.finished_run("shop", 0, true).await;
    assert_eq!(ledger.rows(second).await, [1, 4, 2, 1, 1]);
    ledger.age(&[first, second, third], OLD).await;

    let pruned = ledger.prune().await;

    assert_eq!(
        (pruned.runs, pruned.pages, pruned.changes, pruned.skipped),
        (2, 8, 2, 0)
    );
    for run in [first, second] {
        assert_eq!(ledger.rows(run).await, [0; 5], "run {run} left rows behind");
    }
    assert_eq!(
        ledger.rows(third).await,
        [1, 4, 2, 1, 1],
        "the latest run stays whole"
    );
    let (status, view) = ledger.app.get(&format!("/v1/runs/{third}")).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["changes"]["since_run_id"],
        serde_json::Value::Null,
        "{view}"
    );
    assert_eq!(ledger.app.get(&format!("/v1/runs/{first}")).await.0, 404);
    assert_eq!(
        ledger.prune().await,
        Pruned::default(),
        "a second pass finds nothing"
    );
    ledger.app.stop().await;
}

#[tokio::test]
async fn the_latest_finished_fully_listed_run_of_a_schedule_stays_however_old() {
    let ledger = Ledger::start(&[("shop", "")], 3, "", 0).await;
    let listed = ledger.finished_run("shop", 0, true).await;
    let later = ledger.finished_run("shop", 0, true).await;
    // A later run whose listing never completed (its source failed): the
    // next run is compared with `listed`, so that one must stay.
    sqlx::query("update runs set listed_at = null where id = $1")
        .bind(later)
        .execute(&ledger.app.pool)
        .await
        .unwrap();
    ledger.age(&[listed, later], OLD).await;

    let pruned = ledger.prune().await;

    assert_eq!((pruned.runs, pruned.pages), (1, 3));
    assert_eq!(ledger.rows(later).await, [0; 5]);
    assert_eq!(ledger.rows(listed).await, [1, 3, 0, 1, 1]);
    ledger.app.stop().await;
}

#[tokio::test]
async fn old_runs_of_a_schedule_never_fully_listed_go_whole_and_the_dry_run_says_so() {
    let ledger = Ledger::start(&[("shop", "")], 3, "", 0).await;
    let first = ledger.finished_run("shop", 0, true).await;
    let second = ledger.finished_run("shop", 0, true).await;
    // No run of the schedule finished its listing: none is what a later
    // run is compared with, so both may go, and go whole.
    sqlx::query("update runs set listed_at = null where id = any($1)")
        .bind([first, second])
        .execute(&ledger.app.pool)
        .await
        .unwrap();
    ledger.age(&[first, second], OLD).await;
    let settings = ledger.settings();
    let would: Vec<Uuid> = fanfare::retention::would_prune(&ledger.app.pool, &settings, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(would, [first, second]);

    let pruned = ledger.prune().await;

    assert_eq!((pruned.runs, pruned.pages), (2, 6));
    assert_eq!(ledger.rows(first).await, [0; 5]);
    assert_eq!(ledger.rows(second).await, [0; 5]);
    ledger.app.stop().await;
}

#[tokio::test]
async fn a_run_with_an_undelivered_notification_stays_until_it_is_delivered_or_given_up() {
    // The receiver refuses every delivery: the notifications stay pending.
    let ledger = Ledger::start(&[("shop", "")], 2, "", usize::MAX).await;
    let first = ledger.finished_run("shop", 0, false).await;
    let second = ledger.finished_run("shop", 0, false).await;
    ledger.age(&[first, second], OLD).await;

    assert_eq!(ledger.prune().await.runs, 0);
    assert_eq!(ledger.rows(first).await, [1, 2, 0, 1, 1]);

    // Given up on (notify.retry_for spent), it will never be delivered.
    // (A delivery attempt in flight may write `pending` back: set again.)
    eventually(
        "the run goes once its notification is given up",
        secs(10),
        || async {
            sqlx::query("update notifications set status = 'failed' where run_id = $1")
                .bind(first)
                .execute(&ledger.app.pool)
                .await
                .unwrap();
            let pruned = ledger.prune().await;
            holds(pruned.runs == 1, format!("{pruned:?}"))
        },
    )
    .await;
    assert_eq!(ledger.rows(first).await, [0; 5]);
    assert_eq!(ledger.rows(second).await[0], 1, "the latest run stays");
    ledger.app.stop().await;
}

#[tokio::test]
async fn an_open_run_and_the_run_it_will_be_compared_with_stay() {
    let ledger = Ledger::start(&[("shop", "")], 2, "", 0).await;
    let first = ledger.finished_run("shop", 0, true).await;
    // Open while a later run finishes: when it finishes, it is compared
    // with `first`, the latest finished run created before it.
    let (open, _) = ledger.dispatched("shop").await;
    let latest = ledger.finished_run("shop", 0, true).await;
    ledger.age(&[first, latest], OLD).await;

    assert_eq!(ledger.prune().await, Pruned::default());
    assert_eq!(ledger.rows(first).await[..2], [1, 2]);
    assert_eq!(ledger.rows(open).await[..2], [1, 2]);
    assert_eq!(ledger.rows(latest).await[..2], [1, 2]);
    ledger.app.stop().await;
}

#[tokio::test]
async fn the_run_an_open_runs_conditional_fetches_read_stays() {
    let ledger = Ledger::start(&[("shop", "")], 2, "", 0).await;
    let first = ledger.finished_run("shop", 0, true).await;
    // `earlier` is open when `open` is created: `open`'s validators (and the
    // facts its 304s keep) come from `first`. Once `earlier` finishes, it
    // is both the latest run and the one `open` will be compared with, so
    // only the validators keep `first`.
    let (earlier, requests) = ledger.dispatched("shop").await;
    let (open, _) = ledger.dispatched("shop").await;
    for r in &requests {
        ledger.app.report_recorded(r, &succeeded(r)).await;
    }
    ledger.app.wait_finished(earlier, secs(10)).await;
    ledger.receiver.wait_delivered(earlier, secs(10)).await;
    let from: Option<Uuid> = sqlx::query_scalar("select validators_from from runs where id = $1")
        .bind(open)
        .fetch_one(&ledger.app.pool)
        .await
        .unwrap();
    assert_eq!(from, Some(first));
    ledger.age(&[first, earlier], OLD).await;

    assert_eq!(ledger.prune().await, Pruned::default());
    assert_eq!(ledger.rows(first).await[..2], [1, 2]);
    ledger.app.stop().await;
}

#[tokio::test]
async fn a_schedules_own_keep_runs_for_wins_over_the_default() {
    let schedules = [("brief", "keep_runs_for = \"1h\""), ("lasting", "")];
    let ledger = Ledger::start(
        &schedules,
        2,
        "[retention]\nkeep_runs_for = \"30days\"\n",
        0,
    )
    .await;
    let mut runs = Vec::new();
    for (name, _) in schedules {
        runs.push(ledger.finished_run(name, 0, true).await);
        runs.push(ledger.finished_run(name, 0, true).await);
    }
    ledger.age(&runs, Duration::from_secs(2 * 3600)).await;

    let pruned = ledger.prune().await;

    assert_eq!((pruned.runs, pruned.pages), (1, 2));
    let left: Vec<i64> =
        futures::future::join_all(runs.iter().map(|r| ledger.count("runs", "id", *r))).await;
    assert_eq!(
        left,
        [0, 1, 1, 1],
        "brief's older run went; lasting's are 2 hours of 30 days old"
    );
    ledger.app.stop().await;
}

#[tokio::test]
async fn two_pruners_at_once_delete_each_run_once_and_their_counts_add_up() {
    // Steps of 3 rows: each run takes several transactions, so the two
    // passes overlap on the same runs.
    let ledger = Ledger::start(&[("shop", "")], 10, "[retention]\nbatch_rows = 3\n", 0).await;
    let mut runs = Vec::new();
    for _ in 0..6 {
        runs.push(ledger.finished_run("shop", 0, true).await);
    }
    ledger.age(&runs, OLD).await;
    let settings = ledger.settings();
    let pool = || async {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&ledger.app.database)
            .await
            .unwrap()
    };
    let (a, b) = (pool().await, pool().await);
    let cancel = CancellationToken::new();

    let (one, two) = tokio::join!(
        prune_once(&a, &settings, &cancel),
        prune_once(&b, &settings, &cancel)
    );
    let (one, two) = (one.unwrap(), two.unwrap());

    assert_eq!(
        (one.runs + two.runs, one.pages + two.pages),
        (5, 50),
        "{one:?} {two:?}"
    );
    let left: i64 = sqlx::query_scalar("select count(*) from runs")
        .fetch_one(&ledger.app.pool)
        .await
        .unwrap();
    let pages: i64 = sqlx::query_scalar("select count(*) from pages")
        .fetch_one(&ledger.app.pool)
        .await
        .unwrap();
    assert_eq!((left, pages), (1, 10));
    assert_eq!(
        ledger.rows(runs[5]).await[..2],
        [1, 10],
        "the latest run stays"
    );
    ledger.app.stop().await;
}

/// `fanfare prune ARGS --config FILE`.
async fn fanfare_prune(file: &ConfigFile, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .arg("prune")
        .args(args)
        .arg("--config")
        .arg(file.path())
        .env("RUST_LOG", "warn")
        .env_remove("FANFARE_CONFIG_TOML")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn prune_dry_run_prints_what_would_go_and_deletes_nothing_then_prune_deletes_it() {
    let ledger = Ledger::start(&[("shop", "")], 3, "", 0).await;
    let old = ledger.finished_run("shop", 0, true).await;
    let latest = ledger.finished_run("shop", 0, true).await;
    ledger.age(&[old, latest], OLD).await;
    let file = ConfigFile::write(&config_toml(&ledger.app.database, &ledger.toml));
    let before = ledger.app.ledger_snapshot().await;

    let out = fanfare_prune(&file, &["--dry-run"]).await;

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("would delete 1 runs with 3 pages (dry run: nothing deleted)\n"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.contains(&old.to_string()))
        .unwrap_or_else(|| panic!("no line names run {old}: {stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!((cells[0], cells[3]), ("shop", "3"), "{row}");
    assert!(!stdout.contains(&latest.to_string()), "{stdout}");
    assert_eq!(
        ledger.app.ledger_snapshot().await,
        before,
        "a dry run changes nothing"
    );

    let out = fanfare_prune(&file, &[]).await;

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "deleted 1 runs with 3 pages and 0 page changes\n");
    assert_eq!(ledger.rows(old).await, [0; 5]);
    assert_eq!(ledger.rows(latest).await[..2], [1, 3]);
    ledger.app.stop().await;
}

#[tokio::test]
async fn the_daemons_own_pruner_counts_what_it_deleted_in_its_metrics() {
    let ledger = Ledger::start(
        &[("shop", "")],
        3,
        "[retention]\nprune_every = \"200ms\"\n",
        0,
    )
    .await;
    let old = ledger.finished_run("shop", 0, true).await;
    let latest = ledger.finished_run("shop", 0, true).await;
    ledger.age(&[old, latest], OLD).await;

    let app = &ledger.app;
    let what = "a pass of the daemon's pruner";
    app.wait_for_metric("fanfare_pruned_runs_total", "", secs(10), what, |v| {
        v >= 1.0
    })
    .await;

    assert_eq!(app.metric("fanfare_pruned_runs_total", "").await, 1.0);
    assert_eq!(app.metric("fanfare_pruned_pages_total", "").await, 3.0);
    assert_eq!(ledger.rows(old).await, [0; 5]);
    assert_eq!(ledger.rows(latest).await[..2], [1, 3]);
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(app.metric("fanfare_build_info", &version).await, 1.0);
    ledger.app.stop().await;
}
