//! A host's robots.txt, parsed once and compiled so that each URL is
//! matched in time linear in its length, with every step's cost charged to
//! a [`Budget`].
//!
//! Parsing follows RFC 9309: records `user-agent`, `allow`, `disallow`
//! (and the common misspellings of `disallow`), plus the non-standard
//! `crawl-delay`; a group is one or more `user-agent` lines and the rules
//! after them. The groups naming the crawler's product token (compared
//! case-insensitively with the value up to its first character that is not
//! a letter, `-` or `_`) are combined; without one, the `*` groups are; a
//! rule outside any group counts for no one. A path matches a rule whose
//! pattern it starts with, where `*` stands for any characters and a final
//! `$` for the path's end; the longest matching pattern decides, and of
//! two as long, `allow` wins. Patterns and paths are compared with
//! non-ASCII bytes percent-encoded and unreserved characters decoded.
//!
//! The compiled form has three parts:
//! - patterns without `*` or `$`: sorted, so the longest one that starts a
//!   path is found by binary search (a few probes, each shorter);
//! - patterns ending in `$` without `*`: a hash lookup of the whole path;
//! - patterns with `*`, longest first: one Aho-Corasick pass over the path
//!   finds the rules whose longest literal part occurs in it, and only
//!   those are scanned (left to right, each literal part at its leftmost
//!   place, which is exact for patterns of literals and stars), stopping at
//!   the first rule shorter than the best match so far.
//!
//! A file can still be made costly (thousands of patterns whose literal
//! parts all occur in long paths); the [`Budget`] bounds what it costs.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};

/// The longest `Crawl-delay` read, in seconds (a larger value is this).
const MAX_DELAY_SECS: f64 = 86_400.0;

/// Work counted by [`Budget`]: about one unit per byte looked at.
pub type Units = u64;

/// What matching may cost: each URL adds [`Budget::PER_BYTE`] units per
/// byte of its path (so matching stays linear in the URLs read), and what
/// a URL costs beyond that comes out of a fixed allowance per host and
/// per listing. Once the allowance is spent, [`RobotsRules::allowed`]
/// answers `None`.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    left: Units,
}

impl Budget {
    /// Units each byte of a path brings with it.
    pub const PER_BYTE: Units = 16;
    /// The allowance of one host's rules beyond their linear cost.
    pub const HOST: Units = 100_000_000;
    /// The allowance of one listing, all hosts together.
    pub const LISTING: Units = 1_000_000_000;

    /// A budget of `left` units beyond the linear cost.
    pub fn new(left: Units) -> Self {
        Self { left }
    }

    /// Units left beyond the linear cost.
    pub fn left(&self) -> Units {
        self.left
    }

    /// Whether nothing is left.
    pub fn spent(&self) -> bool {
        self.left == 0
    }

    /// Takes `units` beyond the linear cost; at most what is left.
    pub fn take(&mut self, units: Units) {
        self.left = self.left.saturating_sub(units);
    }
}

/// The verdict of one pattern: its length decides, then `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    len: usize,
    allow: bool,
}

impl Verdict {
    /// Whether this verdict overrides `other` (RFC 9309 2.2.2).
    fn beats(self, other: Option<Verdict>) -> bool {
        match other {
            None => true,
            Some(o) => self.len > o.len || (self.len == o.len && self.allow && !o.allow),
        }
    }
}

/// A pattern with `*`: a literal the path must start with, then literals
/// each found after the one before, the last one at the path's end when
/// `anchored`.
#[derive(Debug)]
struct Wild {
    first: Box<[u8]>,
    rest: Vec<Box<[u8]>>,
    anchored: bool,
    verdict: Verdict,
}

impl Wild {
    fn cost(&self, path: &[u8]) -> Units {
        (path.len() + self.first.len() + self.rest.iter().map(|s| s.len() + 8).sum::<usize>())
            as Units
    }

    fn matches(&self, path: &[u8]) -> bool {
        if !path.starts_with(&self.first) {
            return false;
        }
        let mut at = self.first.len();
        let last = self.rest.len().saturating_sub(1);
        for (i, part) in self.rest.iter().enumerate() {
            if self.anchored && i == last {
                return path.len() >= at + part.len() && path.ends_with(part);
            }
            match memchr::memmem::find(&path[at..], part) {
                Some(found) => at += found + part.len(),
                None => return false,
            }
        }
        true
    }

    /// The longest literal part: a path without it cannot match.
    fn key(&self) -> &[u8] {
        std::iter::once(&self.first)
            .chain(&self.rest)
            .max_by_key(|p| p.len())
            .map(|p| &p[..])
            .unwrap_or_default()
    }
}

/// A host's rules for one product token, compiled for matching.
#[derive(Debug, Default)]
pub struct RobotsRules {
    /// Patterns without `*` or `$`, sorted and unique.
    prefixes: Vec<(Box<[u8]>, Verdict)>,
    /// Patterns ending in `$` without `*`, without their `$`.
    exact: HashMap<Box<[u8]>, Verdict>,
    /// Patterns with `*`, longest first.
    wild: Vec<Wild>,
    /// The literal each wild rule needs, for one pass over a path.
    keys: Option<AhoCorasick>,
    /// For each key, the wild rules needing it.
    by_key: Vec<Vec<u32>>,
    /// The `Crawl-delay` of the group, in seconds.
    delay: Option<f64>,
    /// The rules as the text of a robots.txt (see [`RobotsRules::text`]).
    text: String,
    rules: usize,
}

/// What [`RobotsRules::allowed`] keeps between calls, so that matching
/// many paths allocates nothing per path.
#[derive(Debug, Default)]
pub struct Scratch {
    seen: Vec<bool>,
    touched: Vec<u32>,
    candidates: Vec<u32>,
    path: Vec<u8>,
}

impl RobotsRules {
    /// The rules `body` (a robots.txt) gives the crawler whose product
    /// token is `agent`. Never fails: what cannot be read is left out.
    pub fn parse(agent: &str, body: &[u8]) -> Self {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let mut ours: Vec<(bool, Vec<u8>)> = Vec::new();
        let mut any: Vec<(bool, Vec<u8>)> = Vec::new();
        let (mut ours_delay, mut any_delay, mut early_delay) = (None, None, None);
        let mut named_us = false;
        // The group being read: whether it names us or `*`, and whether the
        // last record was a `user-agent` (its agents are still growing).
        let (mut in_group, mut group_ours, mut group_any, mut agents_open) =
            (false, false, false, false);
        for line in body.split(|b| *b == b'\n' || *b == b'\r') {
            let line = match line.iter().position(|b| *b == b'#') {
                Some(i) => &line[..i],
                None => line,
            };
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let key = line[..colon].trim_ascii().to_ascii_lowercase();
            let value = line[colon + 1..].trim_ascii();
            match key.as_slice() {
                b"user-agent" | b"useragent" | b"user agent" => {
                    if !agents_open {
                        (group_ours, group_any) = (false, false);
                    }
                    (in_group, agents_open) = (true, true);
                    if value.starts_with(b"*") {
                        group_any = true;
                    } else {
                        let token: &[u8] = value
                            .split(|b| !(b.is_ascii_alphabetic() || *b == b'-' || *b == b'_'))
                            .next()
                            .unwrap_or_default();
                        if !token.is_empty() && token.eq_ignore_ascii_case(agent.as_bytes()) {
                            group_ours = true;
                            named_us = true;
                        }
                    }
                }
                b"allow" | b"disallow" | b"dissallow" | b"dissalow" | b"disalow" | b"diasllow"
                | b"disallaw" => {
                    agents_open = false;
                    if !in_group || value.is_empty() {
                        continue;
                    }
                    let rule = (key == b"allow", value.to_vec());
                    if group_ours {
                        ours.push(rule.clone());
                    }
                    if group_any {
                        any.push(rule);
                    }
                }
                b"crawl-delay" | b"crawldelay" | b"crawl delay" => {
                    agents_open = false;
                    let Some(secs) = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<f64>().ok())
                        .filter(|d| d.is_finite() && *d >= 0.0)
                    else {
                        continue;
                    };
                    let secs = secs.min(MAX_DELAY_SECS);
                    if !in_group {
                        early_delay.get_or_insert(secs);
                    }
                    if group_ours {
                        ours_delay.get_or_insert(secs);
                    }
                    if group_any {
                        any_delay.get_or_insert(secs);
                    }
                }
                _ => {}
            }
        }
        let (rules, delay) = if named_us {
            (ours, ours_delay)
        } else {
            (any, any_delay)
        };
        Self::compile(rules, delay.or(early_delay))
    }

    fn compile(rules: Vec<(bool, Vec<u8>)>, delay: Option<f64>) -> Self {
        let mut text = String::from("user-agent: *\n");
        if let Some(d) = delay {
            text.push_str(&format!("crawl-delay: {d}\n"));
        }
        let mut prefixes: HashMap<Box<[u8]>, Verdict> = HashMap::new();
        let mut exact: HashMap<Box<[u8]>, Verdict> = HashMap::new();
        let mut wild = Vec::new();
        let keep = |map: &mut HashMap<Box<[u8]>, Verdict>, pattern: Vec<u8>, verdict: Verdict| {
            let slot = map.entry(pattern.into_boxed_slice()).or_insert(verdict);
            if verdict.beats(Some(*slot)) {
                *slot = verdict;
            }
        };
        let count = rules.len();
        for (allow, raw) in rules {
            let mut pattern = normalize(&raw);
            collapse_stars(&mut pattern);
            if pattern.is_empty() {
                continue;
            }
            text.push_str(if allow { "allow: " } else { "disallow: " });
            // normalize() leaves only ASCII.
            text.push_str(&String::from_utf8_lossy(&pattern));
            text.push('\n');
            let verdict = Verdict {
                len: pattern.len(),
                allow,
            };
            // `x*$` is `x*`, and a trailing `*` adds nothing to a prefix.
            if pattern.ends_with(b"*$") {
                pattern.pop();
            }
            let anchored = pattern.last() == Some(&b'$');
            if anchored {
                pattern.pop();
            }
            while !anchored && pattern.last() == Some(&b'*') {
                pattern.pop();
            }
            if !pattern.contains(&b'*') {
                let map = if anchored { &mut exact } else { &mut prefixes };
                keep(map, pattern, verdict);
                continue;
            }
            let mut parts = pattern.split(|b| *b == b'*');
            let first = parts.next().unwrap_or_default().into();
            let rest = parts.filter(|p| !p.is_empty()).map(Box::from).collect();
            wild.push(Wild {
                first,
                rest,
                anchored,
                verdict,
            });
        }
        let mut prefixes: Vec<_> = prefixes.into_iter().collect();
        prefixes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // Longest first; of two as long, allow first.
        wild.sort_by_key(|w| (std::cmp::Reverse(w.verdict.len), !w.verdict.allow));
        let mut key_ids: HashMap<&[u8], u32> = HashMap::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut by_key: Vec<Vec<u32>> = Vec::new();
        for (i, w) in wild.iter().enumerate() {
            let id = *key_ids.entry(w.key()).or_insert_with(|| {
                keys.push(w.key());
                by_key.push(Vec::new());
                (keys.len() - 1) as u32
            });
            by_key[id as usize].push(i as u32);
        }
        let keys = (!keys.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .build(&keys)
                    .ok()
            })
            .flatten();
        Self {
            prefixes,
            exact,
            wild,
            keys,
            by_key,
            delay,
            text,
            rules: count,
        }
    }

    /// The group's `Crawl-delay`, in seconds.
    pub fn crawl_delay(&self) -> Option<f64> {
        self.delay
    }

    /// The rules read, as a robots.txt of one `user-agent: *` group:
    /// parsed again for any agent, it gives these rules.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Allow and disallow rules read.
    pub fn len(&self) -> usize {
        self.rules
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }

    /// About how many bytes the compiled rules hold.
    pub fn memory(&self) -> usize {
        let per_rule = std::mem::size_of::<Wild>() + 16;
        self.prefixes
            .iter()
            .map(|(p, _)| p.len() + 40)
            .chain(self.exact.keys().map(|p| p.len() + 48))
            .chain(self.wild.iter().map(|w| {
                w.first.len() + w.rest.iter().map(|r| r.len() + 16).sum::<usize>() + per_rule
            }))
            .sum::<usize>()
            + self.keys.as_ref().map_or(0, |k| k.memory_usage())
            + self.by_key.iter().map(|v| v.len() * 4 + 24).sum::<usize>()
            + self.text.len()
    }

    /// Whether the path and query `path` (as a URL gives them,
    /// percent-encoded) may be fetched; `None` when answering would cost
    /// more than `budget` has left (whatever this call spent is taken).
    pub fn allowed(&self, path: &str, budget: &mut Budget, scratch: &mut Scratch) -> Option<bool> {
        if path == "/robots.txt" {
            return Some(true);
        }
        scratch.path.clear();
        normalize_into(path.as_bytes(), &mut scratch.path);
        let path = std::mem::take(&mut scratch.path);
        let mut meter = Meter::new(budget, &path);
        let verdict = self.decide(&path, &mut meter, scratch);
        meter.settle(budget);
        scratch.path = path;
        verdict.map(|best| best.is_none_or(|v| v.allow))
    }

    fn decide(
        &self,
        path: &[u8],
        meter: &mut Meter,
        scratch: &mut Scratch,
    ) -> Option<Option<Verdict>> {
        let mut best = self.longest_prefix(path, meter)?;
        meter.charge(path.len() as Units)?;
        if let Some(v) = self.exact.get(path) {
            // The `$` counts in the pattern's length.
            if v.beats(best) {
                best = Some(*v);
            }
        }
        let Some(keys) = &self.keys else {
            return Some(best);
        };
        // The wild rules whose key occurs in the path.
        scratch.seen.resize(self.by_key.len(), false);
        scratch.candidates.clear();
        meter.charge(path.len() as Units)?;
        let mut within = Some(());
        for m in keys.find_overlapping_iter(path) {
            within = meter.charge(1);
            let id = m.pattern().as_usize();
            if within.is_some() && !scratch.seen[id] {
                scratch.seen[id] = true;
                scratch.touched.push(id as u32);
                within = meter.charge(self.by_key[id].len() as Units);
                scratch.candidates.extend_from_slice(&self.by_key[id]);
            }
            if within.is_none() {
                break;
            }
        }
        for id in scratch.touched.drain(..) {
            scratch.seen[id as usize] = false;
        }
        within?;
        scratch.candidates.sort_unstable();
        for &i in &scratch.candidates {
            let rule = &self.wild[i as usize];
            if !rule.verdict.beats(best) {
                // Longest first: no later rule can beat the best either.
                break;
            }
            meter.charge(rule.cost(path))?;
            if rule.matches(path) {
                best = Some(rule.verdict);
            }
        }
        Some(best)
    }

    /// The longest prefix rule starting `path`: the largest pattern not
    /// after `probe` either starts it or shares a shorter start with it,
    /// which the next probe is cut to.
    fn longest_prefix(&self, path: &[u8], meter: &mut Meter) -> Option<Option<Verdict>> {
        let mut probe = path;
        loop {
            meter.charge(probe.len() as Units + 64)?;
            let i = self.prefixes.partition_point(|(p, _)| p.as_ref() <= probe);
            if i == 0 {
                return Some(None);
            }
            let (pattern, verdict) = &self.prefixes[i - 1];
            if probe.starts_with(pattern) {
                return Some(Some(*verdict));
            }
            let common = pattern
                .iter()
                .zip(probe)
                .take_while(|(a, b)| a == b)
                .count();
            probe = &probe[..common];
        }
    }
}

/// Counts what one path costs against its budget: the path's linear share
/// first, then the budget.
struct Meter {
    spent: Units,
    limit: Units,
}

impl Meter {
    fn new(budget: &Budget, path: &[u8]) -> Self {
        let linear = path.len() as Units * Budget::PER_BYTE;
        Self {
            spent: 0,
            limit: linear.saturating_add(budget.left),
        }
    }

    fn charge(&mut self, units: Units) -> Option<()> {
        self.spent = self.spent.saturating_add(units);
        (self.spent <= self.limit).then_some(())
    }

    /// Takes from `budget` what went beyond the linear share.
    fn settle(&self, budget: &mut Budget) {
        let linear = self.limit - budget.left;
        budget.take(self.spent.min(self.limit).saturating_sub(linear));
        if self.spent > self.limit {
            budget.left = 0;
        }
    }
}

/// `bytes` with non-ASCII bytes, controls and spaces percent-encoded,
/// escapes of unreserved characters decoded and other escapes in upper
/// case: the form patterns and paths are compared in.
fn normalize(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    normalize_into(bytes, &mut out);
    out
}

fn normalize_into(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = h << 4 | l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c);
                } else {
                    out.extend_from_slice(&[b'%', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
                }
                i += 3;
                continue;
            }
        }
        if b >= 0x80 || b <= b' ' || b == 0x7f {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        } else {
            out.push(b);
        }
        i += 1;
    }
}

/// Runs of `*` are one `*`.
fn collapse_stars(pattern: &mut Vec<u8>) {
    pattern.dedup_by(|a, b| *a == b'*' && *b == b'*');
}

/// The path and query of `url` (an absolute URL as the `url` crate writes
/// it, so an http(s) URL's path is at least `/`): what robots.txt rules
/// are matched against.
pub fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let start = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let path = rest[start..].split('#').next().unwrap_or_default();
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(rules: &RobotsRules, path: &str) -> bool {
        let mut budget = Budget::new(Budget::HOST);
        rules
            .allowed(path, &mut budget, &mut Scratch::default())
            .expect("within budget")
    }

    fn check(body: &str, cases: &[(&str, bool)]) {
        let rules = RobotsRules::parse("fanfare-crawler", body.as_bytes());
        for (path, want) in cases {
            assert_eq!(allowed(&rules, path), *want, "{path} under:\n{body}");
        }
    }

    #[test]
    fn the_longest_matching_pattern_decides_and_allow_wins_a_tie() {
        check(
            "user-agent: *\ndisallow: /shop\nallow: /shop/public\ndisallow: /shop/public/secret\n\
             allow: /tie\ndisallow: /tie\n",
            &[
                ("/", true),
                ("/shop", false),
                ("/shopping", false),
                ("/shop/public/x", true),
                ("/shop/public/secret/1", false),
                ("/tie/x", true),
                ("/robots.txt", true),
            ],
        );
    }

    #[test]
    fn stars_and_dollars_match_as_rfc_9309_says() {
        check(
            "user-agent: *\ndisallow: /*.pdf$\ndisallow: /*?sort=\nallow: /docs/*.pdf$\n\
             disallow: /exact$\ndisallow: /a*b*c\ndisallow: /x**y\n",
            &[
                ("/files/report.pdf", false),
                ("/files/report.pdf?x=1", true),
                ("/docs/manual.pdf", true),
                ("/list?sort=price", false),
                ("/list?page=2", true),
                ("/exact", false),
                ("/exact/more", true),
                ("/a-then-b-then-c", false),
                ("/a-then-c-then-b", true),
                ("/x-and-y", false),
            ],
        );
    }

    #[test]
    fn the_crawlers_own_group_replaces_the_star_group_and_groups_combine() {
        let body =
            "user-agent: *\ndisallow: /\n\nuser-agent: Fanfare-Crawler/2.0\nuser-agent: other\n\
                    disallow: /private\n\nuser-agent: fanfare-crawler\ndisallow: /also\n";
        check(
            body,
            &[("/", true), ("/private/x", false), ("/also", false)],
        );
        // Another agent gets the `*` group.
        let rules = RobotsRules::parse("acme-bot", body.as_bytes());
        assert!(!allowed(&rules, "/anything"));
        // Our group, present but empty, allows everything.
        check(
            "user-agent: *\ndisallow: /\nuser-agent: fanfare-crawler\ncrawl-delay: 2\n",
            &[("/x", true)],
        );
    }

    #[test]
    fn rules_outside_a_group_comments_and_empty_disallows_count_for_nothing() {
        check(
            "disallow: /before-any-group\n# user-agent: fanfare-crawler\nuser-agent: * # all\n\
             disallow:\ndisallow: /bb # a comment\nsitemap: https://x/sitemap.xml\ndissallow: /typo\n",
            &[("/before-any-group", true), ("/bb", false), ("/typo", false), ("/c", true)],
        );
    }

    #[test]
    fn percent_encoding_and_non_ascii_compare_equal() {
        check(
            "user-agent: *\ndisallow: /caf\u{e9}\ndisallow: /%7Euser\ndisallow: /a%2fb\n",
            &[
                ("/caf%C3%A9", false),
                ("/~user/x", false),
                ("/a%2Fb", false),
                ("/a/b", true),
            ],
        );
    }

    #[test]
    fn crawl_delay_comes_from_the_group_or_else_before_any_group() {
        let rules = RobotsRules::parse(
            "fanfare-crawler",
            b"crawl-delay: 9\nuser-agent: *\ncrawl-delay: 1.5\n",
        );
        assert_eq!(rules.crawl_delay(), Some(1.5));
        let rules = RobotsRules::parse("fanfare-crawler", b"crawl-delay: 9\nuser-agent: *\n");
        assert_eq!(rules.crawl_delay(), Some(9.0));
        let rules = RobotsRules::parse("x", b"user-agent: *\ncrawl-delay: 1e12\n");
        assert_eq!(rules.crawl_delay(), Some(MAX_DELAY_SECS));
    }

    #[test]
    fn the_rules_text_parses_back_to_the_same_rules_for_any_agent() {
        let body = "user-agent: fanfare-crawler\ncrawl-delay: 3\ndisallow: /*.pdf$\nallow: /a\n\
                    disallow: /a/b\nuser-agent: *\ndisallow: /\n";
        let rules = RobotsRules::parse("fanfare-crawler", body.as_bytes());
        let again = RobotsRules::parse("someone-else", rules.text().as_bytes());
        assert_eq!(again.crawl_delay(), Some(3.0));
        assert_eq!(again.len(), 3);
        for path in ["/x.pdf", "/a/c", "/a/b/c", "/z"] {
            assert_eq!(allowed(&rules, path), allowed(&again, path), "{path}");
        }
    }

    #[test]
    fn a_costly_file_runs_out_of_budget_instead_of_running_on() {
        // Thousands of patterns whose longest literal parts all occur in the
        // path, each scanned to the end for an `a` that is not there.
        let mut body = String::from("user-agent: *\n");
        for i in 0..3000 {
            body.push_str(&format!("disallow: /*a*a*a*a*b{i}z\n"));
        }
        let rules = RobotsRules::parse("fanfare-crawler", body.as_bytes());
        let path: String = (0..3000).map(|i| format!("b{i}z")).collect();
        let path = format!("/{path}");
        let mut budget = Budget::new(1_000_000);
        let mut scratch = Scratch::default();
        assert_eq!(rules.allowed(&path, &mut budget, &mut scratch), None);
        assert!(budget.spent());
        // A path of the same length naming none of the keys is cheap.
        let plain = format!("/{}", "a".repeat(path.len()));
        let mut budget = Budget::new(1_000_000);
        assert_eq!(rules.allowed(&plain, &mut budget, &mut scratch), Some(true));
        assert_eq!(budget.left(), 1_000_000, "within the path's linear share");
    }

    #[test]
    fn the_longest_prefix_is_found_among_many() {
        let mut body = String::from("user-agent: *\n");
        for p in ["/a", "/ab", "/abc/d", "/abd", "/b", "/abc/e/f"] {
            body.push_str(&format!("disallow: {p}\nallow: {p}/open\n"));
        }
        check(
            &body,
            &[
                ("/abc/e/g", false),
                ("/abc/e/f/open", true),
                ("/abc/d/open/x", true),
                ("/ab/open", true),
                ("/ac", false),
                ("/c", true),
                ("/", true),
            ],
        );
    }

    #[test]
    fn path_of_keeps_the_path_and_query_and_drops_the_fragment() {
        assert_eq!(path_of("https://x.example/a/b?c=1#frag"), "/a/b?c=1");
        assert_eq!(path_of("https://x.example"), "/");
        assert_eq!(path_of("http://[::1]:81/p"), "/p");
    }
}
