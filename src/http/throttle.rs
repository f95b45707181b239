//! What a client cannot drive without limit: logging (a WARN at most once
//! per interval, carrying how many events it stands for), and guessing the
//! admin token (a lockout per client that doubles with each wrong token).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts events and says when one may be logged: the first at once, then
/// at most one per interval, each carrying the number of events since the
/// last one logged (itself included).
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    last: Option<Instant>,
    count: u64,
}

impl LogThrottle {
    /// At most one log line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(ThrottleState {
                last: None,
                count: 0,
            }),
        }
    }

    /// Counts one event now; `Some(n)` when it should be logged, standing
    /// for `n` events.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    /// [`LogThrottle::hit`] at a given instant.
    pub fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.count += 1;
        let due = match s.last {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= self.every,
        };
        if !due {
            return None;
        }
        s.last = Some(now);
        Some(std::mem::take(&mut s.count))
    }
}

/// How wrong tokens are slowed down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Wrong tokens a client may present, answered at once, before the
    /// first lockout.
    pub free_failures: u32,
    /// The first lockout; each further wrong token doubles it.
    pub first_lockout: Duration,
    /// The longest lockout.
    pub max_lockout: Duration,
    /// A client's failures are forgotten once it has presented no wrong
    /// token for this long (and is not locked out).
    pub forget_after: Duration,
    /// Clients remembered at most (bounding memory); when every one is
    /// still remembered, the wrong tokens of further clients count on one
    /// record they share.
    pub max_clients: usize,
}

impl LockoutPolicy {
    /// `free_failures` wrong tokens free, then 1 s, 2 s, 4 s … up to 15 min;
    /// forgotten after an hour without one; 10,000 clients (about 1 MB).
    pub const fn after(free_failures: u32) -> Self {
        Self {
            free_failures,
            first_lockout: Duration::from_secs(1),
            max_lockout: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(3600),
            max_clients: 10_000,
        }
    }

    /// The lockout after a client's `failures`-th wrong token, if any.
    pub fn lockout(&self, failures: u32) -> Option<Duration> {
        let beyond = failures.checked_sub(self.free_failures)?;
        let doubled = self
            .first_lockout
            .checked_mul(1u32.checked_shl(beyond).unwrap_or(u32::MAX))
            .unwrap_or(self.max_lockout);
        Some(doubled.min(self.max_lockout))
    }
}

/// Who a record is about: an IPv4 address, an IPv6 /64 (one subscriber's
/// prefix: its 2^64 addresses are one client), or every client that came
/// once the table was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    Addr(IpAddr),
    Overflow,
}

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => ClientKey::Addr(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::Addr(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey::Addr(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

/// One client's wrong tokens.
#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

impl Record {
    fn expired(&self, now: Instant, forget_after: Duration) -> bool {
        self.locked_until.is_none_or(|until| until <= now)
            && now.saturating_duration_since(self.last) >= forget_after
    }
}

/// What counting a wrong token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The client's wrong tokens so far (in the current record).
    pub failures: u32,
    /// The lockout it started, if any.
    pub locked_for: Option<Duration>,
}

/// What an attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The right token.
    Right,
    /// A wrong token, counted.
    Wrong(Failure),
    /// The client is locked out for this long still; its token was not
    /// looked at.
    LockedOut(Duration),
}

/// Wrong admin tokens per client, and the lockout that slows guessing
/// down. A client that presents no wrong token has no record and is never
/// delayed; a locked-out client is refused whatever it presents, until its
/// lockout ends.
#[derive(Debug)]
pub struct FailureThrottle {
    policy: LockoutPolicy,
    clients: Mutex<HashMap<ClientKey, Record>>,
}

impl FailureThrottle {
    /// An empty table under `policy`.
    pub fn new(policy: LockoutPolicy) -> Self {
        Self {
            policy,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The policy it applies.
    pub fn policy(&self) -> &LockoutPolicy {
        &self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Record>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key of `client` in `clients`: its own while it has a record or
    /// there is room for one, else the shared overflow record.
    fn key(
        &self,
        clients: &mut HashMap<ClientKey, Record>,
        client: IpAddr,
        now: Instant,
    ) -> ClientKey {
        let key = ClientKey::of(client);
        if clients.contains_key(&key) || clients.len() < self.policy.max_clients {
            return key;
        }
        let forget_after = self.policy.forget_after;
        clients.retain(|_, r| !r.expired(now, forget_after));
        if clients.len() < self.policy.max_clients {
            key
        } else {
            ClientKey::Overflow
        }
    }

    /// How long `client` is still locked out, if it is.
    pub fn locked(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        Self::locked_in(&self.lock(), &self.policy, client, now)
    }

    fn locked_in(
        clients: &HashMap<ClientKey, Record>,
        policy: &LockoutPolicy,
        client: IpAddr,
        now: Instant,
    ) -> Option<Duration> {
        let record = match clients.get(&ClientKey::of(client)) {
            Some(r) => r,
            // A client without a record of its own shares the overflow
            // record when the table is full.
            None if clients.len() >= policy.max_clients => clients.get(&ClientKey::Overflow)?,
            None => return None,
        };
        let until = record.locked_until?;
        (until > now).then(|| until - now)
    }

    /// One attempt of `client` at `now`: refused unchecked while it is
    /// locked out; otherwise `right()` decides, and a wrong token is
    /// counted (locking the client out past the free failures) while a
    /// right one forgets the client's wrong ones. The whole attempt holds
    /// the table's lock, so concurrent attempts of a client whose lockout
    /// just ended are checked one at a time: the first wrong one locks the
    /// others out.
    pub fn attempt(&self, client: IpAddr, now: Instant, right: impl FnOnce() -> bool) -> Attempt {
        let mut clients = self.lock();
        if let Some(left) = Self::locked_in(&clients, &self.policy, client, now) {
            return Attempt::LockedOut(left);
        }
        if right() {
            if !clients.is_empty() {
                clients.remove(&ClientKey::of(client));
            }
            return Attempt::Right;
        }
        Attempt::Wrong(self.count(&mut clients, client, now))
    }

    /// Counts a wrong token from `client`.
    fn count(
        &self,
        clients: &mut HashMap<ClientKey, Record>,
        client: IpAddr,
        now: Instant,
    ) -> Failure {
        let key = self.key(clients, client, now);
        let policy = self.policy;
        let record = clients.entry(key).or_insert(Record {
            failures: 0,
            last: now,
            locked_until: None,
        });
        if record.expired(now, policy.forget_after) {
            *record = Record {
                failures: 0,
                last: now,
                locked_until: None,
            };
        }
        record.failures = record.failures.saturating_add(1);
        record.last = now;
        let locked_for = policy.lockout(record.failures);
        if let Some(d) = locked_for {
            record.locked_until = Some(now + d);
        }
        Failure {
            failures: record.failures,
            locked_for,
        }
    }

    /// Clients with a record now (the overflow record counts as one).
    pub fn clients(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_logs_then_one_line_per_interval_carries_the_count_since_the_last() {
        let throttle = LogThrottle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(throttle.hit_at(t0), Some(1));
        for i in 1..=2999 {
            assert_eq!(throttle.hit_at(t0 + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(throttle.hit_at(t0 + Duration::from_secs(60)), Some(3000));
        assert_eq!(throttle.hit_at(t0 + Duration::from_secs(61)), None);
        assert_eq!(throttle.hit_at(t0 + Duration::from_secs(125)), Some(2));
    }
}

#[cfg(test)]
mod lockout_tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    impl FailureThrottle {
        /// A wrong token from `client`, which must not be locked out.
        fn failed(&self, client: IpAddr, now: Instant) -> Failure {
            match self.attempt(client, now, || false) {
                Attempt::Wrong(failure) => failure,
                other => panic!("{client} was not checked: {other:?}"),
            }
        }
    }

    #[test]
    fn ten_wrong_tokens_are_free_then_each_locks_the_client_out_twice_as_long_up_to_the_cap() {
        let policy = LockoutPolicy::after(10);
        let lockouts: Vec<Option<u64>> = (1..=24)
            .map(|n| policy.lockout(n).map(|d| d.as_secs()))
            .collect();
        assert_eq!(lockouts[..9], [None; 9]);
        assert_eq!(
            lockouts[9..],
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900, 900, 900].map(Some)
        );
        assert_eq!(policy.lockout(u32::MAX), Some(Duration::from_secs(900)));
    }

    #[test]
    fn a_locked_out_client_is_refused_until_its_lockout_ends_and_others_are_not_delayed() {
        let throttle = FailureThrottle::new(LockoutPolicy::after(10));
        let t0 = Instant::now();
        let guesser = ip("203.0.113.7");
        for n in 1..=9 {
            assert_eq!(
                throttle.failed(guesser, t0),
                Failure {
                    failures: n,
                    locked_for: None
                }
            );
            assert_eq!(throttle.locked(guesser, t0), None);
        }
        let tenth = throttle.failed(guesser, t0);
        assert_eq!(tenth.locked_for, Some(Duration::from_secs(1)));
        assert_eq!(throttle.locked(guesser, t0), Some(Duration::from_secs(1)));
        let half = t0 + Duration::from_millis(500);
        assert_eq!(
            throttle.locked(guesser, half),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            throttle.locked(ip("203.0.113.8"), half),
            None,
            "another client"
        );
        let after = t0 + Duration::from_secs(1);
        assert_eq!(throttle.locked(guesser, after), None);
        assert_eq!(
            throttle.failed(guesser, after).locked_for,
            Some(Duration::from_secs(2))
        );
        // While locked out, even the right token is not looked at.
        let mut looked = false;
        assert_eq!(
            throttle.attempt(guesser, after, || {
                looked = true;
                true
            }),
            Attempt::LockedOut(Duration::from_secs(2))
        );
        assert!(!looked);
        // The right token, once the lockout is over, forgets the failures.
        let over = after + Duration::from_secs(2);
        assert_eq!(throttle.attempt(guesser, over, || true), Attempt::Right);
        assert_eq!(throttle.clients(), 0);
        assert_eq!(throttle.failed(guesser, over).failures, 1);
    }

    #[test]
    fn failures_are_forgotten_after_an_hour_without_one() {
        let throttle = FailureThrottle::new(LockoutPolicy::after(10));
        let t0 = Instant::now();
        let client = ip("198.51.100.1");
        for _ in 0..10 {
            throttle.failed(client, t0);
        }
        assert!(throttle.locked(client, t0).is_some());
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(throttle.locked(client, later), None);
        assert_eq!(throttle.failed(client, later).failures, 1);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client_and_ipv4_mapped_addresses_are_their_ipv4() {
        let throttle = FailureThrottle::new(LockoutPolicy::after(2));
        let t0 = Instant::now();
        throttle.failed(ip("2001:db8:1:2::1"), t0);
        let second = throttle.failed(ip("2001:db8:1:2:ffff::9"), t0);
        assert_eq!(second.failures, 2);
        assert!(throttle.locked(ip("2001:db8:1:2::abcd"), t0).is_some());
        assert_eq!(throttle.locked(ip("2001:db8:1:3::1"), t0), None);
        throttle.failed(ip("192.0.2.1"), t0);
        assert_eq!(throttle.failed(ip("::ffff:192.0.2.1"), t0).failures, 2);
    }

    #[test]
    fn the_table_is_capped_and_clients_beyond_it_share_one_record() {
        let policy = LockoutPolicy {
            max_clients: 100,
            ..LockoutPolicy::after(3)
        };
        let throttle = FailureThrottle::new(policy);
        let t0 = Instant::now();
        for i in 0..100u32 {
            throttle.failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), t0);
        }
        assert_eq!(throttle.clients(), 100);
        // Newcomers (from many addresses) count together once it is full.
        for i in 0..3u32 {
            throttle.failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i)), t0);
        }
        assert!(throttle.clients() <= 101, "{}", throttle.clients());
        assert!(
            throttle.locked(ip("11.9.9.9"), t0).is_some(),
            "the shared record is locked"
        );
        // Once the first records expire, newcomers get records of their own.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(throttle.failed(ip("12.0.0.1"), later).failures, 1);
        assert!(throttle.clients() <= 2, "{}", throttle.clients());
    }
}
