//! Politeness at listing: each host's robots.txt, read once per run, and
//! the run's limits for each host it crawls.
//!
//! For every host a run's page list names, [`Politeness::filter`] fetches
//! `/robots.txt` once (when the schedule obeys robots.txt), per RFC 9309:
//!
//! - 2xx: the file (its first [`MAX_ROBOTS_BYTES`]) is matched for the
//!   schedule's product token (`fanfare-crawler`, or its `user_agent` up to
//!   the first `/`); `Crawl-delay` becomes the host's least interval;
//! - 4xx (404 most often): no rules, everything allowed;
//! - 5xx, 429, a timeout or a failed connection: the site is unreachable,
//!   and everything on it is disallowed for this run;
//! - a host on a private network the daemon may not reach: no rules (the
//!   crawler refuses those pages itself, and says why).
//!
//! Disallowed URLs are left out of the run and counted in its `listing`
//! (`disallowed_by_robots`, with the first few as examples). Each host
//! seen gets a [`HostPolicy`]: the schedule's `per_host_in_flight` and the
//! longer of `per_host_rate`'s interval and the `Crawl-delay`.

use std::collections::HashMap;
use std::time::Duration;

use fanfare_crawler::netguard::{self, NetPolicy};
use futures::StreamExt;
use serde::Serialize;
use texting_robots::Robot;
use url::Url;

use crate::config::Schedule;
use crate::ledger::{host_of, HostPolicy};
use crate::redact;

/// How much of a robots.txt is read (RFC 9309 asks for at least 500 KiB).
pub const MAX_ROBOTS_BYTES: usize = 512 * 1024;
/// How long one robots.txt fetch may take.
pub const ROBOTS_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Crawl-delay` honoured as given; a longer one is this.
pub const MAX_CRAWL_DELAY: Duration = Duration::from_secs(300);
/// robots.txt files fetched at once during a listing.
const FETCHES_AT_ONCE: usize = 16;
/// Examples kept of disallowed URLs and unreachable robots.txt files.
const EXAMPLES: usize = 5;

/// What a host's robots.txt says for this run.
enum Rules {
    /// Matched per URL.
    File(Box<Robot>),
    /// No usable file (4xx, unparsable, not reachable by the daemon's
    /// network policy): everything is allowed.
    AllowAll,
    /// The file could not be fetched (5xx, timeout, network; why): nothing
    /// is allowed this run.
    DisallowAll(String),
}

/// What robots.txt did to a listing, as stored in the run's `listing`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RobotsStats {
    /// URLs left out because robots.txt disallows them (or could not be read).
    pub disallowed_by_robots: u64,
    /// The first few of them.
    pub disallowed_examples: Vec<String>,
    /// Hosts whose robots.txt was fetched.
    pub robots_fetched: u64,
    /// Hosts whose robots.txt was unreachable (5xx, timeout): all of their
    /// URLs are disallowed for the run.
    pub robots_unreachable: u64,
    /// The first few of those, with why.
    pub robots_unreachable_examples: Vec<String>,
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
    hosts: HashMap<String, Rules>,
    stats: RobotsStats,
}

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
            stats: RobotsStats::default(),
        }
    }

    /// What robots.txt did so far.
    pub fn stats(&self) -> &RobotsStats {
        &self.stats
    }

    /// Keeps the URLs of `batch` that robots.txt allows, fetching the
    /// robots.txt of hosts not seen before; returns them with the policies
    /// of the hosts this batch named first.
    pub async fn filter(&mut self, batch: Vec<String>) -> (Vec<String>, Vec<HostPolicy>) {
        // Each URL's host, once; the hosts this run has not seen yet with
        // their first URL (to find their robots.txt).
        let hosts: Vec<String> = batch.iter().map(|u| host_of(u)).collect();
        let mut new_hosts: Vec<(String, String)> = Vec::new();
        let mut seen_now = std::collections::HashSet::new();
        for (url, host) in batch.iter().zip(&hosts) {
            if !self.hosts.contains_key(host) && seen_now.insert(host.as_str()) {
                new_hosts.push((host.clone(), url.clone()));
            }
        }
        let mut policies = Vec::with_capacity(new_hosts.len());
        let fetched: Vec<(String, Rules)> = if self.obey {
            let this = &*self;
            futures::stream::iter(new_hosts)
                .map(|(host, url)| async move {
                    let rules = this.fetch(&url).await;
                    (host, rules)
                })
                .buffer_unordered(FETCHES_AT_ONCE)
                .collect()
                .await
        } else {
            new_hosts
                .into_iter()
                .map(|(host, _)| (host, Rules::AllowAll))
                .collect()
        };
        for (host, rules) in fetched {
            let delay = match &rules {
                Rules::File(robot) => robot
                    .delay
                    .filter(|d| d.is_finite() && *d > 0.0)
                    .map(|d| Duration::from_secs_f64(f64::from(d)).min(MAX_CRAWL_DELAY)),
                _ => None,
            };
            if self.obey {
                self.stats.robots_fetched += 1;
            }
            if let Rules::DisallowAll(why) = &rules {
                self.stats.robots_unreachable += 1;
                if self.stats.robots_unreachable_examples.len() < EXAMPLES {
                    self.stats
                        .robots_unreachable_examples
                        .push(format!("{host}: {why}"));
                }
            }
            if let Some(delay) = delay {
                tracing::info!(%host, crawl_delay = ?delay, "robots.txt sets a Crawl-delay; the host is paced by it");
            }
            policies.push(HostPolicy {
                host: host.clone(),
                in_flight_limit: self.in_flight_limit,
                interval: self.interval.max(delay.unwrap_or_default()),
            });
            self.hosts.insert(host, rules);
        }
        let mut allowed = Vec::with_capacity(batch.len());
        for (url, host) in batch.into_iter().zip(&hosts) {
            let ok = match self.hosts.get(host) {
                Some(Rules::File(robot)) => robot.allowed(&url),
                Some(Rules::DisallowAll(_)) => false,
                Some(Rules::AllowAll) | None => true,
            };
            if ok {
                allowed.push(url);
            } else {
                self.stats.disallowed_by_robots += 1;
                if self.stats.disallowed_examples.len() < EXAMPLES {
                    self.stats.disallowed_examples.push(redact::url_text(&url));
                }
            }
        }
        (allowed, policies)
    }

    /// The rules of the host of `page_url`.
    async fn fetch(&self, page_url: &str) -> Rules {
        let Some(robots) = Url::parse(page_url)
            .ok()
            .and_then(|u| u.join("/robots.txt").ok())
        else {
            return Rules::AllowAll;
        };
        let shown = redact::url(&robots);
        if let Err(blocked) = self.policy.check_url(&robots) {
            tracing::debug!(robots = %shown, %blocked, "robots.txt is on a network the daemon may not reach; no rules");
            return Rules::AllowAll;
        }
        match tokio::time::timeout(ROBOTS_TIMEOUT, self.read(&robots)).await {
            Ok(Ok(Fetched::Body(body))) => match Robot::new(&self.agent, &body) {
                Ok(robot) => Rules::File(Box::new(robot)),
                Err(e) => {
                    tracing::warn!(robots = %shown, error = %e, "robots.txt could not be parsed; everything is allowed");
                    Rules::AllowAll
                }
            },
            Ok(Ok(Fetched::Unavailable(status))) => {
                tracing::debug!(robots = %shown, %status, "no robots.txt; everything is allowed");
                Rules::AllowAll
            }
            Ok(Ok(Fetched::Blocked)) => Rules::AllowAll,
            Ok(Err(why)) => self.unreachable(&shown, why),
            Err(_) => self.unreachable(&shown, format!("no answer in {ROBOTS_TIMEOUT:?}")),
        }
    }

    fn unreachable(&self, shown: &str, why: String) -> Rules {
        tracing::warn!(robots = %shown, %why, "robots.txt is unreachable; the host's pages are left out of this run (RFC 9309)");
        Rules::DisallowAll(why)
    }

    /// Reads robots.txt: its first [`MAX_ROBOTS_BYTES`] on a 2xx.
    async fn read(&self, robots: &Url) -> Result<Fetched, String> {
        let mut get = self.http.get(robots.clone());
        if let Some(agent) = &self.header {
            get = get.header(reqwest::header::USER_AGENT, agent.as_str());
        }
        let mut response = match get.send().await {
            Ok(r) => r,
            Err(e) if netguard::find_blocked(&e).is_some() => return Ok(Fetched::Blocked),
            // Too many redirects: RFC 9309 lets that count as unavailable.
            Err(e) if e.is_redirect() => return Ok(Fetched::Unavailable(0)),
            Err(e) => return Err(crate::telemetry::error_chain(&e.without_url())),
        };
        let status = response.status();
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(format!("HTTP {status}"));
        }
        if !status.is_success() {
            return Ok(Fetched::Unavailable(status.as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| crate::telemetry::error_chain(&e.without_url()))?
        {
            let room = MAX_ROBOTS_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_ROBOTS_BYTES {
                break;
            }
        }
        Ok(Fetched::Body(body))
    }
}

/// A robots.txt fetch that got an answer.
enum Fetched {
    Body(Vec<u8>),
    /// 4xx (or 0: too many redirects).
    Unavailable(u16),
    /// The network guard refused the address.
    Blocked,
}
