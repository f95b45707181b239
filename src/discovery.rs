//! Following links: what of a report's links may join its run.
//!
//! A run whose schedule follows links (`pages = { crawl = ... }`, or
//! `follow_links = true`) asks the crawler for each page's links; when a
//! report that carries them is recorded, [`Discoverer::judge`] leaves out
//! here what the schedule's `include` / `exclude` patterns and the hosts'
//! robots.txt rule out, and hands the rest to the ledger, whose statement
//! recording the report judges depth, host, what the run has already and
//! `max_pages` ([`ledger::RECORD_PAGES_FINDING`]), and adds the new pages.
//!
//! robots.txt is the one the run read for the host (`run_hosts`), at
//! listing or, for a host first seen in a link, when that link comes
//! ([`Discoverer::judge`]): each replica compiles a run's rules once and
//! keeps them (a bounded cache). With `same_host = false`, a report whose
//! links lead to hosts the run has no row for has those hosts' robots.txt
//! read first, as a listing reads them ([`crate::robots::Politeness`]: the
//! same fetch, bounds and network guard, [`NEW_HOSTS_PER_REPORT`] at most),
//! by a task of its own that holds the run's lock for new hosts (one read
//! per host per run, whichever reports and replicas name it), and the hosts
//! get their `run_hosts` rows in a transaction of their own. Only then is
//! the report judged and handed to the recorder: nothing waits inside the
//! recorder's statement, and the page that carried the links is still open
//! while its links wait, so the run cannot finish before they are added. A
//! link to a host the run still has no row for (past the bound, or the
//! read failed) is left out by the ledger (counted as `host`), so no page
//! is ever crawled on a host whose robots.txt was not consulted.
//!
//! Matching is bounded as at listing: linear in each URL, and beyond that
//! by a [`Budget::HOST`] per report; a link whose verdict would cost more
//! is left out as disallowed.
//!
//! A link the run is known to have is not sent to the ledger at all: each
//! replica remembers, per run, the links its committed batches reported
//! back as in the run ([`KnownUrls`], filled by the recorder after each
//! commit). It only ever holds URLs the ledger has, so it saves the
//! statement a lookup and never decides alone: a link it does not hold is
//! judged by the statement, and the run's unique index is what keeps a URL
//! once, across batches and replicas. A crawl's pages link back to pages
//! already found (the home page, the parent, the menu) far more often than
//! to new ones, so most links end here.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use fanfare_crawler::netguard::NetPolicy;
use sqlx::PgPool;
use url::Url;
use uuid::Uuid;

use crate::config::{LinkRules, Settings, MAX_LINKS_PER_PAGE};
use crate::ledger::{
    self, FoundLinks, HostRobots, LeftOut, LeftOutExample, RobotsOutcome, RunStatus, Trigger,
};
use crate::redact;
use crate::robots::rules::{path_of, Scratch};
use crate::robots::{Budget, Politeness, RobotsRules};

/// Runs whose link rules one replica keeps at most.
const RUNS_CACHED: usize = 1024;
/// Examples of left-out links one report adds, per reason.
const EXAMPLES_PER_REPORT: usize = 2;
/// Hosts new to its run whose robots.txt one report's links may have
/// read; links to further new hosts are left out (as `host`).
pub const NEW_HOSTS_PER_REPORT: usize = 16;

/// URLs one replica remembers, all runs together; past it the memory
/// starts over (about 32 MiB at most).
pub const KNOWN_URLS_HELD: usize = 1 << 20;

/// The URLs each recent run is known to have: those of its links that
/// committed batches reported back as in the run (see the module
/// documentation). Kept as 128-bit keyed hashes (keys drawn per process,
/// so no site can aim links at a collision); a URL is found here only if
/// it was put here.
pub struct KnownUrls {
    keys: (RandomState, RandomState),
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    runs: HashMap<Uuid, HashSet<u128>>,
    total: usize,
}

impl Default for KnownUrls {
    fn default() -> Self {
        Self {
            keys: (RandomState::new(), RandomState::new()),
            held: Mutex::new(Held::default()),
        }
    }
}

impl KnownUrls {
    fn key(&self, url: &str) -> u128 {
        (u128::from(self.keys.0.hash_one(url)) << 64) | u128::from(self.keys.1.hash_one(url))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that run `run_id` has `urls` (call only after the
    /// statement that says so has committed).
    pub fn add<'a>(&self, run_id: Uuid, urls: impl IntoIterator<Item = &'a str>) {
        let keys: Vec<u128> = urls.into_iter().map(|u| self.key(u)).collect();
        let mut held = self.held();
        if held.total + keys.len() > KNOWN_URLS_HELD {
            *held = Held::default();
        }
        let Held { runs, total } = &mut *held;
        let known = runs.entry(run_id).or_default();
        for key in keys {
            if known.insert(key) {
                *total += 1;
            }
        }
    }

    /// Forgets run `run_id` (finished: no report of it adds links).
    pub fn forget(&self, run_id: Uuid) {
        let mut held = self.held();
        if let Some(known) = held.runs.remove(&run_id) {
            held.total -= known.len();
        }
    }

    /// Keeps the links of `links` that run `run_id` is not known to have.
    fn drop_known(&self, run_id: Uuid, links: &mut Vec<(String, String)>) {
        if links.is_empty() {
            return;
        }
        let keys: Vec<u128> = links.iter().map(|(url, _)| self.key(url)).collect();
        let held = self.held();
        let Some(known) = held.runs.get(&run_id) else {
            return;
        };
        let mut keys = keys.iter();
        links.retain(|_| keys.next().is_none_or(|k| !known.contains(k)));
    }
}

/// What a run's robots.txt says of one host.
enum HostRules {
    /// Everything allowed (no file, not read, or robots.txt not obeyed).
    Allow,
    /// Nothing allowed (unreachable, too complex).
    Deny,
    /// Matched per URL.
    Rules(RobotsRules),
}

/// One run's link rules, as a replica keeps them.
struct RunLinks {
    /// The run's schedule.
    schedule: String,
    rules: LinkRules,
    max_pages: i64,
    obey_robots: bool,
    hosts: HashMap<String, HostRules>,
    /// Read after the run's listing ended: no host joins it later.
    complete: bool,
}

/// Judges the links of reports (see the module documentation).
pub struct Discoverer {
    pool: PgPool,
    settings: Arc<Settings>,
    /// What robots.txt files are fetched with (the page sources' client,
    /// built with `policy`).
    http: reqwest::Client,
    policy: NetPolicy,
    /// Each recent run's rules; `None` for a run that does not follow links.
    runs: Mutex<HashMap<Uuid, Option<Arc<RunLinks>>>>,
    /// Each recent run's lock for reading new hosts' robots.txt.
    reading: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// URLs the runs have, as far as this replica knows.
    known: Arc<KnownUrls>,
}

impl Discoverer {
    /// A discoverer reading runs from `pool` and robots.txt files with
    /// `http` (built with `policy`), leaving out the links `known` holds
    /// (the recorder fills it).
    pub fn new(
        pool: PgPool,
        settings: Arc<Settings>,
        (http, policy): (reqwest::Client, NetPolicy),
        known: Arc<KnownUrls>,
    ) -> Self {
        Self {
            pool,
            settings,
            http,
            policy,
            runs: Mutex::new(HashMap::new()),
            reading: Mutex::new(HashMap::new()),
            known,
        }
    }

    /// What of `links` (a successful report's, on a page of `run_id`) goes
    /// to the ledger; `None` when the run does not follow links (its links
    /// are dropped).
    pub async fn judge(
        &self,
        run_id: Uuid,
        links: Vec<String>,
    ) -> Result<Option<Box<FoundLinks>>, sqlx::Error> {
        let Some(mut run) = self.run(run_id, false).await? else {
            return Ok(None);
        };
        let links = normalized(links);
        let new_host = |run: &RunLinks| links.iter().any(|(_, host)| !run.hosts.contains_key(host));
        if !run.complete && run.obey_robots && new_host(&run) {
            // The run may have read the host's robots.txt since.
            if let Some(fresh) = self.run(run_id, true).await? {
                run = fresh;
            }
        }
        if !run.rules.same_host && new_host(&run) {
            self.read_new_hosts(run_id, &run, &links).await?;
            if let Some(fresh) = self.run(run_id, true).await? {
                run = fresh;
            }
        }
        let mut found = run.judge(links);
        self.known.drop_known(run_id, &mut found.links);
        Ok(Some(Box::new(found)))
    }

    /// Reads the robots.txt of the first [`NEW_HOSTS_PER_REPORT`] hosts of
    /// `links` that `run` has no row for, and gives the run their rows
    /// (see the module documentation). The work is a task of its own, so
    /// that a caller that stops waiting (a crawler whose callback timed
    /// out) does not leave it half done: its retry finds the hosts read.
    async fn read_new_hosts(
        &self,
        run_id: Uuid,
        run: &RunLinks,
        links: &[(String, String)],
    ) -> Result<(), sqlx::Error> {
        let Some(schedule) = self.settings.schedule(&run.schedule).cloned() else {
            return Ok(());
        };
        let mut seen = HashSet::new();
        let wanted: Vec<(String, String)> = links
            .iter()
            .filter(|(_, host)| !run.hosts.contains_key(host) && seen.insert(host.as_str()))
            .take(NEW_HOSTS_PER_REPORT)
            .cloned()
            .collect();
        let lock = {
            let mut reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
            if reading.len() >= RUNS_CACHED {
                reading.clear();
            }
            reading.entry(run_id).or_default().clone()
        };
        let (pool, http, policy) = (self.pool.clone(), self.http.clone(), self.policy.clone());
        let task = tokio::spawn(async move {
            let _reading = lock.lock_owned().await;
            // Another report (or replica, or the listing) may have read
            // some of them while this one waited.
            let known: HashSet<String> = ledger::run_robots(&pool, run_id)
                .await?
                .into_iter()
                .map(|(host, _)| host)
                .collect();
            let firsts: Vec<String> = wanted
                .into_iter()
                .filter(|(_, host)| !known.contains(host))
                .map(|(url, _)| url)
                .collect();
            if firsts.is_empty() {
                return Ok(());
            }
            let mut polite = Politeness::new(&schedule, http, policy);
            let hosts = match polite.filter(firsts).await {
                Ok((_, hosts)) => hosts,
                Err(e) => {
                    tracing::warn!(%run_id, error = %e, "could not read the robots.txt of hosts the run's links lead to; their links are left out");
                    return Ok(());
                }
            };
            tracing::info!(%run_id, hosts = hosts.len(), "read the robots.txt of hosts the run's links lead to");
            ledger::add_hosts(&pool, run_id, &hosts).await
        });
        match task.await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "reading the robots.txt of new hosts failed; their links are left out");
                Ok(())
            }
        }
    }

    /// The run's rules, from the cache unless `reload`.
    async fn run(&self, run_id: Uuid, reload: bool) -> Result<Option<Arc<RunLinks>>, sqlx::Error> {
        if !reload {
            let cached = self
                .runs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&run_id)
                .cloned();
            if let Some(cached) = cached {
                return Ok(cached);
            }
        }
        let loaded = self.load(run_id).await?;
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if runs.len() >= RUNS_CACHED {
            runs.clear();
        }
        runs.insert(run_id, loaded.clone());
        Ok(loaded)
    }

    async fn load(&self, run_id: Uuid) -> Result<Option<Arc<RunLinks>>, sqlx::Error> {
        let Some(run) = ledger::get_run(&self.pool, run_id).await? else {
            return Ok(None);
        };
        let Some(schedule) = self.settings.schedule(&run.schedule) else {
            return Ok(None);
        };
        // A redrive crawls its parent's failures again, not the site.
        let Some(rules) = schedule
            .links
            .clone()
            .filter(|_| run.trigger != Trigger::Redrive)
        else {
            return Ok(None);
        };
        let agent = schedule.robots_agent().to_string();
        let hosts = ledger::run_robots(&self.pool, run_id)
            .await?
            .into_iter()
            .map(|(host, robots)| (host, host_rules(&agent, &robots)))
            .collect();
        Ok(Some(Arc::new(RunLinks {
            schedule: schedule.name.clone(),
            rules,
            max_pages: i64::try_from(schedule.max_pages).unwrap_or(i64::MAX),
            obey_robots: schedule.obey_robots,
            hosts,
            complete: run.status != RunStatus::Listing,
        })))
    }
}

/// What a host's stored robots.txt outcome allows.
fn host_rules(agent: &str, robots: &HostRobots) -> HostRules {
    match (robots.outcome, &robots.rules) {
        (RobotsOutcome::Rules, Some(text)) => {
            HostRules::Rules(RobotsRules::parse(agent, text.as_bytes()))
        }
        (RobotsOutcome::Unreachable | RobotsOutcome::TooComplex, _) => HostRules::Deny,
        _ => HostRules::Allow,
    }
}

/// The report's links that are http(s) URLs, each once, as the `url` crate
/// writes them (without fragment), with their hosts; at most
/// [`MAX_LINKS_PER_PAGE`] (a crawler that sends more is not believed).
fn normalized(links: Vec<String>) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    links
        .into_iter()
        .take(MAX_LINKS_PER_PAGE as usize)
        .filter_map(|raw| {
            let mut url = Url::parse(&raw).ok()?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return None;
            }
            url.set_fragment(None);
            let url = String::from(url);
            if url.len() > fanfare_crawler::crawl::MAX_LINK_BYTES {
                return None;
            }
            let host = ledger::host_of(&url);
            seen.insert(url.clone()).then_some((url, host))
        })
        .collect()
}

impl RunLinks {
    fn judge(&self, links: Vec<(String, String)>) -> FoundLinks {
        let mut found = FoundLinks {
            reported: links.len() as i64,
            max_depth: self.rules.max_depth as i32,
            same_host: self.rules.same_host,
            max_pages: self.max_pages,
            ..FoundLinks::default()
        };
        let mut examples: HashMap<LeftOut, usize> = HashMap::new();
        let mut example = |found: &mut FoundLinks, reason: LeftOut, url: &str| {
            let n = examples.entry(reason).or_default();
            if *n < EXAMPLES_PER_REPORT {
                *n += 1;
                found.examples.push(LeftOutExample {
                    reason,
                    url: redact::url_text(url),
                });
            }
        };
        let mut budget = Budget::new(Budget::HOST);
        let mut scratch = Scratch::default();
        for (url, host) in links {
            if !self.rules.admits(&url) {
                found.off_pattern += 1;
                example(&mut found, LeftOut::Pattern, &url);
                continue;
            }
            let allowed = !self.obey_robots
                || match self.hosts.get(&host) {
                    // Not a host of the run: the ledger leaves it out.
                    None => true,
                    Some(HostRules::Allow) => true,
                    Some(HostRules::Deny) => false,
                    Some(HostRules::Rules(rules)) => rules
                        .allowed(path_of(&url), &mut budget, &mut scratch)
                        .unwrap_or(false),
                };
            if !allowed {
                found.off_robots += 1;
                example(&mut found, LeftOut::Robots, &url);
                continue;
            }
            found.links.push((url, host));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UrlGlob;

    fn run(include: &[&str], exclude: &[&str], robots: &str) -> RunLinks {
        RunLinks {
            schedule: "shop".into(),
            rules: LinkRules {
                max_depth: 3,
                include: include.iter().map(|g| UrlGlob::new(g).unwrap()).collect(),
                exclude: exclude.iter().map(|g| UrlGlob::new(g).unwrap()).collect(),
                same_host: true,
                obey_nofollow: true,
            },
            max_pages: 100,
            obey_robots: true,
            hosts: HashMap::from([(
                "shop.example".to_string(),
                HostRules::Rules(RobotsRules::parse("fanfare-crawler", robots.as_bytes())),
            )]),
            complete: true,
        }
    }

    #[test]
    fn known_urls_leave_out_only_what_was_added_for_that_run_until_forgotten() {
        let known = KnownUrls::default();
        let (run, other) = (Uuid::new_v4(), Uuid::new_v4());
        let links = || {
            normalized(vec![
                "https://shop.example/a".into(),
                "https://shop.example/b".into(),
                "https://shop.example/c".into(),
            ])
        };
        known.add(run, ["https://shop.example/a", "https://shop.example/c"]);
        let mut left = links();
        known.drop_known(run, &mut left);
        assert_eq!(
            left,
            [(
                "https://shop.example/b".to_string(),
                "shop.example".to_string()
            )]
        );
        let mut left = links();
        known.drop_known(other, &mut left);
        assert_eq!(left, links(), "another run's links are its own");
        known.forget(run);
        let mut left = links();
        known.drop_known(run, &mut left);
        assert_eq!(left, links());
        assert_eq!(known.held().total, 0);
    }

    #[test]
    fn known_urls_start_over_past_their_bound() {
        let known = KnownUrls::default();
        let run = Uuid::new_v4();
        let urls: Vec<String> = (0..KNOWN_URLS_HELD + 1)
            .map(|i| format!("https://shop.example/{i}"))
            .collect();
        known.add(run, urls[..KNOWN_URLS_HELD].iter().map(String::as_str));
        assert_eq!(known.held().total, KNOWN_URLS_HELD);
        known.add(run, [urls[KNOWN_URLS_HELD].as_str()]);
        assert_eq!(known.held().total, 1, "it started over");
        let mut left = normalized(vec![urls[0].clone()]);
        known.drop_known(run, &mut left);
        assert_eq!(left.len(), 1, "a forgotten URL goes to the ledger again");
    }

    #[test]
    fn patterns_then_robots_leave_links_out_and_count_them() {
        let run = run(
            &["https://shop.example/*"],
            &["*/cart*"],
            "User-agent: *\nDisallow: /private/\n",
        );
        let links = normalized(vec![
            "https://shop.example/item/1#reviews".into(),
            "https://shop.example/item/1".into(),
            "https://shop.example/cart?add=1".into(),
            "https://elsewhere.example/x".into(),
            "https://shop.example/private/2".into(),
            "mailto:a@b.example".into(),
        ]);
        let found = run.judge(links);
        assert_eq!(found.reported, 4, "the repeat and the mailto are not links");
        assert_eq!(found.off_pattern, 2);
        assert_eq!(found.off_robots, 1);
        assert_eq!(
            found.links,
            [(
                "https://shop.example/item/1".to_string(),
                "shop.example".to_string()
            )]
        );
        assert!(found
            .examples
            .iter()
            .any(|e| e.reason == LeftOut::Robots && e.url == "https://shop.example/private/2"));
    }
}
