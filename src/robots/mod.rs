//! Politeness at listing: each host's robots.txt, read once per run, and
//! the run's limits for each host it crawls.
//!
//! For every host a run's page list names, [`Politeness::filter`] fetches
//! `/robots.txt` once (when the schedule obeys robots.txt), per RFC 9309:
//!
//! - 2xx: the file (its first [`MAX_ROBOTS_BYTES`]) is read for the
//!   schedule's product token (`fanfare-crawler`, or its `user_agent` up to
//!   the first `/`) and compiled once ([`rules`]); `Crawl-delay` becomes
//!   the host's least interval;
//! - 4xx (404 most often): no rules, everything allowed;
//! - 5xx, 429, a timeout or a failed connection: the site is unreachable,
//!   and everything on it is disallowed for this run;
//! - a host on a private network the daemon may not reach: no rules (the
//!   crawler refuses those pages itself, and says why).
//!
//! Up to [`FETCHES_AT_ONCE`] files are fetched at once, so a batch naming
//! hundreds of hosts that never answer costs about one [`ROBOTS_TIMEOUT`].
//! What each host's file said is written with the host's first pages
//! ([`HostRobots`]), and a listing taken over reads it back
//! ([`Politeness::known`]) instead of fetching the file again.
//!
//! Matching runs on a blocking thread, never on the async workers, and is
//! bounded: each URL may cost work linear in its length, and beyond that a
//! host's rules have [`Budget::HOST`] and the whole listing
//! [`Budget::LISTING`]. A host whose rules run out of budget (or whose
//! compiled rules would take more than [`RULES_MEMORY`] with the others')
//! is *too complex*: its remaining URLs are left out of the run, like those
//! of a host whose robots.txt is unreachable, and counted in the run's
//! `listing` as `robots_too_complex` with examples. Leaving them out keeps
//! to the site's wishes as far as they could be read; the URLs allowed
//! before the budget ran out stay in the run.
//!
//! Disallowed URLs are left out of the run and counted in its `listing`
//! (`disallowed_by_robots`, with the first few as examples). Each host
//! seen gets a [`HostPolicy`]: the schedule's `per_host_in_flight` and the
//! longer of `per_host_rate`'s interval and the `Crawl-delay`.

pub mod rules;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fanfare_crawler::netguard::{self, NetPolicy};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use crate::config::Schedule;
use crate::ledger::{host_of, HostPolicy, HostRobots, RobotsOutcome};
use crate::redact;
pub use rules::{Budget, RobotsRules};

/// How much of a robots.txt is read (RFC 9309 asks for at least 500 KiB).
pub const MAX_ROBOTS_BYTES: usize = 512 * 1024;
/// How long one robots.txt fetch may take.
pub const ROBOTS_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Crawl-delay` honoured as given; a longer one is this.
pub const MAX_CRAWL_DELAY: Duration = Duration::from_secs(300);
/// robots.txt files one listing fetches at once.
pub const FETCHES_AT_ONCE: usize = 512;
/// Bytes of robots.txt files one replica holds at once while they are
/// read and compiled (a fetch waits for room, within its timeout).
const BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;
/// What one listing's compiled rules may hold in memory, all hosts together.
pub const RULES_MEMORY: usize = 64 * 1024 * 1024;
/// Examples kept of disallowed URLs and unreachable robots.txt files.
const EXAMPLES: usize = 5;

/// What a host's robots.txt says for this run.
enum Rules {
    /// Matched per URL.
    File(Arc<RobotsRules>),
    /// No usable file (4xx, not reachable by the daemon's network policy),
    /// or not read: everything is allowed.
    AllowAll,
    /// The file could not be fetched (5xx, timeout, network), or its rules
    /// cost too much: nothing more is allowed this run.
    DisallowAll,
}

/// One host as the listing knows it.
struct Host {
    rules: Rules,
    /// What matching this host's URLs may still cost beyond their share.
    budget: Budget,
}

/// What robots.txt did to a listing, as stored in the run's `listing`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RobotsStats {
    /// URLs left out because robots.txt disallows them (or could not be
    /// read, or matched within the budget).
    pub disallowed_by_robots: u64,
    /// The first few of them.
    pub disallowed_examples: Vec<String>,
    /// Hosts whose robots.txt was fetched (by this lister or, for a
    /// listing taken over, by the one before).
    pub robots_fetched: u64,
    /// Hosts whose robots.txt was unreachable (5xx, timeout): all of their
    /// URLs are disallowed for the run.
    pub robots_unreachable: u64,
    /// The first few of those, with why.
    pub robots_unreachable_examples: Vec<String>,
    /// Hosts whose rules cost more to keep or to match than the listing
    /// allows: their remaining URLs are left out of the run.
    pub robots_too_complex: u64,
    /// The first few of those, with why.
    pub robots_too_complex_examples: Vec<String>,
    /// Time spent matching URLs against rules, in milliseconds.
    pub robots_match_ms: u64,
}

impl RobotsStats {
    fn unreachable(&mut self, host: &str, why: &str) {
        self.robots_unreachable += 1;
        if self.robots_unreachable_examples.len() < EXAMPLES {
            self.robots_unreachable_examples
                .push(format!("{host}: {why}"));
        }
    }

    fn too_complex(&mut self, host: &str, why: &str) {
        self.robots_too_complex += 1;
        if self.robots_too_complex_examples.len() < EXAMPLES {
            self.robots_too_complex_examples
                .push(format!("{host}: {why}"));
        }
    }

    fn disallowed(&mut self, url: &str) {
        self.disallowed_by_robots += 1;
        if self.disallowed_examples.len() < EXAMPLES {
            self.disallowed_examples.push(redact::url_text(url));
        }
    }
}

/// One run's politeness state while it is listed.
pub struct Politeness {
    http: reqwest::Client,
    policy: NetPolicy,
    obey: bool,
    /// Product token matched in robots.txt.
    agent: String,
    /// `User-Agent` header sent for robots.txt.
    header: Option<String>,
    in_flight_limit: u32,
    interval: Duration,
    hosts: HashMap<String, Host>,
    /// What matching may still cost this listing beyond the URLs' shares.
    budget: Budget,
    /// Bytes the hosts' compiled rules hold.
    memory: usize,
    stats: RobotsStats,
}

/// Why a batch could not be filtered.
#[derive(Debug, thiserror::Error)]
#[error("matching URLs against robots.txt failed: {0}")]
pub struct FilterError(String);

impl Politeness {
    /// The politeness of a listing of `schedule`, fetching with `http`
    /// (built with `policy`, as the page-source fetches are).
    pub fn new(schedule: &Schedule, http: reqwest::Client, policy: NetPolicy) -> Self {
        Self {
            http,
            policy,
            obey: schedule.obey_robots,
            agent: schedule.robots_agent().to_string(),
            header: schedule.user_agent.clone(),
            in_flight_limit: schedule.per_host_in_flight,
            interval: schedule.per_host_interval,
            hosts: HashMap::new(),
            budget: Budget::new(Budget::LISTING),
            memory: 0,
            stats: RobotsStats::default(),
        }
    }

    /// What robots.txt did so far.
    pub fn stats(&self) -> &RobotsStats {
        &self.stats
    }

    /// Takes what an earlier lister of the run found in its hosts'
    /// robots.txt (as [`crate::ledger::run_robots`] reads it back): those
    /// hosts are not fetched again, and their rows are not written again.
    pub async fn known(&mut self, hosts: Vec<(String, HostRobots)>) {
        let agent = self.agent.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            hosts
                .into_iter()
                .map(|(host, robots)| {
                    let rules = match (robots.outcome, &robots.rules) {
                        (RobotsOutcome::Rules, Some(text)) => {
                            Some(RobotsRules::parse(&agent, text.as_bytes()))
                        }
                        _ => None,
                    };
                    (host, robots, rules)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (host, robots, compiled) in compiled {
            let note = robots.note.as_deref().unwrap_or("no reason kept");
            let rules = match robots.outcome {
                RobotsOutcome::NotRead | RobotsOutcome::Allowed => Rules::AllowAll,
                RobotsOutcome::Rules => match compiled {
                    Some(r) => self.keep(&host, r).0,
                    None => Rules::AllowAll,
                },
                RobotsOutcome::Unreachable => {
                    self.stats.unreachable(&host, note);
                    Rules::DisallowAll
                }
                RobotsOutcome::TooComplex => {
                    self.stats.too_complex(&host, note);
                    Rules::DisallowAll
                }
            };
            if robots.outcome != RobotsOutcome::NotRead {
                self.stats.robots_fetched += 1;
            }
            self.hosts.insert(
                host,
                Host {
                    rules,
                    budget: Budget::new(Budget::HOST),
                },
            );
        }
    }

    /// Keeps the URLs of `batch` that robots.txt allows, fetching the
    /// robots.txt of hosts not seen before; returns them with the policies
    /// of the hosts this batch named first.
    pub async fn filter(
        &mut self,
        batch: Vec<String>,
    ) -> Result<(Vec<String>, Vec<HostPolicy>), FilterError> {
        // Each URL's host, once; the hosts this run has not seen yet with
        // their first URL (to find their robots.txt).
        let hosts: Vec<String> = batch.iter().map(|u| host_of(u)).collect();
        let mut new_hosts: Vec<(String, String)> = Vec::new();
        let mut seen_now = HashSet::new();
        for (url, host) in batch.iter().zip(&hosts) {
            if !self.hosts.contains_key(host) && seen_now.insert(host.as_str()) {
                new_hosts.push((host.clone(), url.clone()));
            }
        }
        let policies = self.read_new(new_hosts).await;
        let allowed = self.matched(batch, hosts).await?;
        Ok((allowed, policies))
    }

    /// Fetches (or, when the schedule ignores robots.txt, skips) the
    /// robots.txt of `new_hosts`, all at once up to [`FETCHES_AT_ONCE`].
    async fn read_new(&mut self, new_hosts: Vec<(String, String)>) -> Vec<HostPolicy> {
        let fetched: Vec<(String, Fetched)> = if self.obey {
            let this = &*self;
            futures::stream::iter(new_hosts)
                .map(|(host, url)| async move { (host, this.fetch(&url).await) })
                .buffer_unordered(FETCHES_AT_ONCE)
                .collect()
                .await
        } else {
            new_hosts
                .into_iter()
                .map(|(host, _)| (host, Fetched::NotRead))
                .collect()
        };
        let mut policies = Vec::with_capacity(fetched.len());
        for (host, fetched) in fetched {
            let (rules, robots, delay) = match fetched {
                Fetched::NotRead => (Rules::AllowAll, HostRobots::not_read(), None),
                Fetched::Allowed => (
                    Rules::AllowAll,
                    HostRobots {
                        outcome: RobotsOutcome::Allowed,
                        rules: None,
                        note: None,
                    },
                    None,
                ),
                Fetched::Unreachable(why) => {
                    self.stats.unreachable(&host, &why);
                    let robots = HostRobots {
                        outcome: RobotsOutcome::Unreachable,
                        rules: None,
                        note: Some(why),
                    };
                    (Rules::DisallowAll, robots, None)
                }
                Fetched::Rules(compiled) => {
                    let delay = compiled
                        .crawl_delay()
                        .filter(|d| *d > 0.0)
                        .map(|d| Duration::from_secs_f64(d).min(MAX_CRAWL_DELAY));
                    let text = compiled.text().to_string();
                    let (rules, outcome) = self.keep(&host, compiled);
                    let robots = match outcome {
                        Ok(()) => HostRobots {
                            outcome: RobotsOutcome::Rules,
                            rules: Some(text),
                            note: None,
                        },
                        Err(why) => HostRobots {
                            outcome: RobotsOutcome::TooComplex,
                            rules: None,
                            note: Some(why),
                        },
                    };
                    (rules, robots, delay)
                }
            };
            if self.obey {
                self.stats.robots_fetched += 1;
            }
            if let Some(delay) = delay {
                tracing::info!(%host, crawl_delay = ?delay, "robots.txt sets a Crawl-delay; the host is paced by it");
            }
            policies.push(HostPolicy {
                host: host.clone(),
                in_flight_limit: self.in_flight_limit,
                interval: self.interval.max(delay.unwrap_or_default()),
                robots,
            });
            self.hosts.insert(
                host,
                Host {
                    rules,
                    budget: Budget::new(Budget::HOST),
                },
            );
        }
        policies
    }

    /// Keeps `host`'s compiled rules when the listing's rules still fit in
    /// [`RULES_MEMORY`]; otherwise the host is too complex (and why).
    fn keep(&mut self, host: &str, compiled: RobotsRules) -> (Rules, Result<(), String>) {
        let size = compiled.memory();
        if self.memory + size > RULES_MEMORY {
            let why = format!(
                "its {} rules would take {} KiB, more than the listing has left for rules",
                compiled.len(),
                size / 1024
            );
            tracing::warn!(%host, %why, "robots.txt is too complex to keep; the host's pages are left out of this run");
            self.stats.too_complex(host, &why);
            return (Rules::DisallowAll, Err(why));
        }
        self.memory += size;
        if compiled.is_empty() {
            return (Rules::AllowAll, Ok(()));
        }
        (Rules::File(Arc::new(compiled)), Ok(()))
    }

    /// The URLs of `batch` (whose hosts are `hosts`, all known by now) that
    /// robots.txt allows, matched on a blocking thread.
    async fn matched(
        &mut self,
        batch: Vec<String>,
        hosts: Vec<String>,
    ) -> Result<Vec<String>, FilterError> {
        let all_allowed = hosts.iter().all(|h| {
            self.hosts
                .get(h)
                .is_none_or(|h| matches!(h.rules, Rules::AllowAll))
        });
        if all_allowed {
            return Ok(batch);
        }
        let mut known = std::mem::take(&mut self.hosts);
        let mut budget = self.budget;
        let mut stats = std::mem::take(&mut self.stats);
        let done = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let allowed = match_batch(batch, hosts, &mut known, &mut budget, &mut stats);
            stats.robots_match_ms += started.elapsed().as_millis() as u64;
            (known, budget, stats, allowed)
        })
        .await;
        match done {
            Ok((known, budget, stats, allowed)) => {
                (self.hosts, self.budget, self.stats) = (known, budget, stats);
                Ok(allowed)
            }
            Err(e) => Err(FilterError(e.to_string())),
        }
    }

    /// The rules of the host of `page_url`.
    async fn fetch(&self, page_url: &str) -> Fetched {
        let Some(robots) = Url::parse(page_url)
            .ok()
            .and_then(|u| u.join("/robots.txt").ok())
        else {
            return Fetched::Allowed;
        };
        let shown = redact::url(&robots);
        if let Err(blocked) = self.policy.check_url(&robots) {
            tracing::debug!(robots = %shown, %blocked, "robots.txt is on a network the daemon may not reach; no rules");
            return Fetched::Allowed;
        }
        let body = match tokio::time::timeout(ROBOTS_TIMEOUT, self.read(&robots)).await {
            Ok(Ok(Read::Body(body, permit))) => (body, permit),
            Ok(Ok(Read::Unavailable(status))) => {
                tracing::debug!(robots = %shown, %status, "no robots.txt; everything is allowed");
                return Fetched::Allowed;
            }
            Ok(Ok(Read::Blocked)) => return Fetched::Allowed,
            Ok(Err(why)) => return unreachable(&shown, why),
            Err(_) => return unreachable(&shown, format!("no answer in {ROBOTS_TIMEOUT:?}")),
        };
        let agent = self.agent.clone();
        // Parsing is linear in the file, but up to half a megabyte of it.
        match tokio::task::spawn_blocking(move || {
            let (body, _permit) = body;
            RobotsRules::parse(&agent, &body)
        })
        .await
        {
            Ok(rules) => Fetched::Rules(rules),
            Err(e) => unreachable(&shown, format!("reading the file failed: {e}")),
        }
    }

    /// Reads robots.txt: its first [`MAX_ROBOTS_BYTES`] on a 2xx, holding
    /// room for them in [`BYTES_IN_FLIGHT`].
    async fn read(&self, robots: &Url) -> Result<Read, String> {
        let mut get = self.http.get(robots.clone());
        if let Some(agent) = &self.header {
            get = get.header(reqwest::header::USER_AGENT, agent.as_str());
        }
        let mut response = match get.send().await {
            Ok(r) => r,
            Err(e) if netguard::find_blocked(&e).is_some() => return Ok(Read::Blocked),
            // Too many redirects: RFC 9309 lets that count as unavailable.
            Err(e) if e.is_redirect() => return Ok(Read::Unavailable(0)),
            Err(e) => return Err(crate::telemetry::error_chain(&e.without_url())),
        };
        let status = response.status();
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(format!("HTTP {status}"));
        }
        if !status.is_success() {
            return Ok(Read::Unavailable(status.as_u16()));
        }
        let room = bytes_in_flight();
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| crate::telemetry::error_chain(&e.without_url()))?
        {
            let take = chunk.len().min(MAX_ROBOTS_BYTES - body.len());
            let more = room
                .clone()
                .acquire_many_owned(take.div_ceil(1024) as u32)
                .await
                .map_err(|e| e.to_string())?;
            match &mut permit {
                Some(p) => p.merge(more),
                None => permit = Some(more),
            }
            body.extend_from_slice(&chunk[..take]);
            if body.len() >= MAX_ROBOTS_BYTES {
                break;
            }
        }
        Ok(Read::Body(body, permit))
    }
}

/// Matches each URL of `batch` with its host's rules, counting what was
/// left out in `stats`; a host that runs out of budget (its own or the
/// listing's) is disallowed from then on.
fn match_batch(
    batch: Vec<String>,
    hosts: Vec<String>,
    known: &mut HashMap<String, Host>,
    budget: &mut Budget,
    stats: &mut RobotsStats,
) -> Vec<String> {
    let mut scratch = rules::Scratch::default();
    let mut allowed = Vec::with_capacity(batch.len());
    for (url, host) in batch.into_iter().zip(hosts) {
        let Some(entry) = known.get_mut(&host) else {
            allowed.push(url);
            continue;
        };
        let ok = match &entry.rules {
            Rules::AllowAll => true,
            Rules::DisallowAll => false,
            Rules::File(rules) => {
                let mut left = Budget::new(entry.budget.left().min(budget.left()));
                let before = left.left();
                let verdict = rules.allowed(rules::path_of(&url), &mut left, &mut scratch);
                let spent = before - left.left();
                entry.budget.take(spent);
                budget.take(spent);
                match verdict {
                    Some(ok) => ok,
                    None => {
                        let why = if budget.spent() {
                            "the listing spent its budget for matching robots.txt rules".to_string()
                        } else {
                            format!(
                                "its {} rules cost more than {} units of work to match",
                                rules.len(),
                                Budget::HOST
                            )
                        };
                        tracing::warn!(%host, %why, "robots.txt is too costly to match; the host's remaining pages are left out of this run");
                        stats.too_complex(&host, &why);
                        entry.rules = Rules::DisallowAll;
                        false
                    }
                }
            }
        };
        if ok {
            allowed.push(url);
        } else {
            stats.disallowed(&url);
        }
    }
    allowed
}

/// The room all robots.txt files being read share, in KiB.
fn bytes_in_flight() -> Arc<Semaphore> {
    static ROOM: OnceLock<Arc<Semaphore>> = OnceLock::new();
    ROOM.get_or_init(|| Arc::new(Semaphore::new(BYTES_IN_FLIGHT / 1024)))
        .clone()
}

fn unreachable(shown: &str, why: String) -> Fetched {
    tracing::warn!(robots = %shown, %why, "robots.txt is unreachable; the host's pages are left out of this run (RFC 9309)");
    Fetched::Unreachable(why)
}

/// What a host's robots.txt fetch found.
enum Fetched {
    /// The schedule does not obey robots.txt.
    NotRead,
    /// No rules (4xx, a network the daemon may not reach).
    Allowed,
    /// The file's rules for the crawler.
    Rules(RobotsRules),
    /// 5xx, 429, timeout, network (why).
    Unreachable(String),
}

/// A robots.txt fetch that got an answer.
enum Read {
    /// The body, with the room it holds.
    Body(Vec<u8>, Option<OwnedSemaphorePermit>),
    /// 4xx (or 0: too many redirects).
    Unavailable(u16),
    /// The network guard refused the address.
    Blocked,
}
