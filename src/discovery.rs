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
//! robots.txt is the one the run read at listing for the host
//! (`run_hosts`): each replica compiles a run's rules once and keeps them
//! (a bounded cache). A link to a host the run has not read robots.txt of
//! is left out by the ledger (counted as `host`), so no page is ever
//! crawled on a host whose robots.txt was not consulted: with
//! `same_host = false`, a crawl reaches the hosts its start URLs (or
//! listed pages) are on, not new ones.
//!
//! Matching is bounded as at listing: linear in each URL, and beyond that
//! by a [`Budget::HOST`] per report; a link whose verdict would cost more
//! is left out as disallowed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use url::Url;
use uuid::Uuid;

use crate::config::{LinkRules, Settings, MAX_LINKS_PER_PAGE};
use crate::ledger::{
    self, FoundLinks, HostRobots, LeftOut, LeftOutExample, RobotsOutcome, RunStatus, Trigger,
};
use crate::redact;
use crate::robots::rules::{path_of, Scratch};
use crate::robots::{Budget, RobotsRules};

/// Runs whose link rules one replica keeps at most.
const RUNS_CACHED: usize = 1024;
/// Examples of left-out links one report adds, per reason.
const EXAMPLES_PER_REPORT: usize = 2;

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
    /// Each recent run's rules; `None` for a run that does not follow links.
    runs: Mutex<HashMap<Uuid, Option<Arc<RunLinks>>>>,
}

impl Discoverer {
    /// A discoverer reading runs from `pool`.
    pub fn new(pool: PgPool, settings: Arc<Settings>) -> Self {
        Self {
            pool,
            settings,
            runs: Mutex::new(HashMap::new()),
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
        if !run.complete
            && links
                .iter()
                .any(|(_, host)| run.obey_robots && !run.hosts.contains_key(host))
        {
            // The run may have read the host's robots.txt since.
            if let Some(fresh) = self.run(run_id, true).await? {
                run = fresh;
            }
        }
        Ok(Some(Box::new(run.judge(links))))
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
