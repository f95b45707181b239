//! No reach into private networks: a guard for every outbound fetch made on
//! behalf of a page list or a page.
//!
//! Page lists and pages name URLs that third parties control. Without a
//! guard, a sitemap could aim the daemon (or an in-process crawl) at
//! `http://169.254.170.2/…` (ECS task credentials), `169.254.169.254` (the
//! instance metadata service), the Lambda runtime API, the daemon's own
//! `/metrics`, or anything else inside the VPC.
//!
//! [`NetPolicy::apply`] closes that on a [`reqwest::ClientBuilder`]:
//!
//! - a DNS resolver that drops every address that is not public, **after**
//!   resolution, so a name that resolves to `127.0.0.1` is refused too (the
//!   connection can only go to an address that was checked);
//! - a redirect policy that checks every hop whose host is an IP literal
//!   (reqwest does not resolve those), and hop names through the resolver;
//! - no proxy from the environment (a proxy would resolve names itself).
//!
//! Call [`NetPolicy::check_url`] before the first request too: an IP-literal
//! URL never reaches the resolver.
//!
//! Through a forward proxy the client resolves only the proxy's name; the
//! proxy resolves the target. So a fetch through a proxy checks the target
//! itself with [`NetPolicy::check_target`] (before the request and before
//! each redirect hop), stricter than the resolver: the target is refused
//! when *any* of its addresses is not public, since the proxy may pick any
//! of them. The proxy's own address is the operator's choice and is not
//! checked. A refusal is a [`Blocked`] error in the
//! reqwest error's source chain; [`find_blocked`] digs it out.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;
use url::{Host, Url};

/// Environment variable that opens the guard in the Lambda crawler.
pub const ENV_ALLOW_PRIVATE_NETWORKS: &str = "FANFARE_CRAWLER_ALLOW_PRIVATE_NETWORKS";

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 169.254.0.0/16 (cloud metadata and credentials endpoints), fe80::/10.
    LinkLocal,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7, fec0::/10.
    Private,
    /// 100.64.0.0/10, carrier-grade NAT.
    SharedAddressSpace,
    /// 0.0.0.0, ::.
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 0/8, 192.0.0/24, benchmarking, documentation, 240/4, broadcast,
    /// 100::/64, 2001:db8::/32.
    Reserved,
    /// The address of the Lambda runtime API (`AWS_LAMBDA_RUNTIME_API`).
    LambdaRuntimeApi,
}

impl AddressClass {
    /// A short phrase for messages: "a loopback address".
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Loopback => "a loopback address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Private => "a private-network address",
            AddressClass::SharedAddressSpace => "a carrier-grade NAT address",
            AddressClass::Unspecified => "the unspecified address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Reserved => "a reserved address",
            AddressClass::LambdaRuntimeApi => "the Lambda runtime API's address",
        }
    }
}

/// The class of a non-public address, or `None` for a public one.
/// IPv6 addresses that carry an IPv4 address are judged by it: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002:AABB:CCDD::/48`,
/// which a 6to4 relay delivers to the IPv4 address `AA.BB.CC.DD`).
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped().or_else(|| compatible_v4(v6)) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    Some(if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if ip.is_private() {
        AddressClass::Private
    } else if a == 100 && (64..128).contains(&b) {
        AddressClass::SharedAddressSpace
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if a == 0
        || a >= 240
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
    {
        AddressClass::Reserved
    } else {
        return None;
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    let s = ip.segments();
    Some(if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if s[0] & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        AddressClass::Private
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) {
        AddressClass::Reserved
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // NAT64: judged by the IPv4 address it embeds.
        return classify_v4(v4_of(s[6], s[7]));
    } else if s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        // IPv4-translated (SIIT, RFC 2765): ::ffff:0:a.b.c.d.
        return classify_v4(v4_of(s[6], s[7]));
    } else if s[0] == 0x2002 {
        // 6to4 (RFC 3056): the site's IPv4 address follows the prefix.
        return classify_v4(v4_of(s[1], s[2]));
    } else {
        return None;
    })
}

/// `::a.b.c.d` (deprecated IPv4-compatible form), except `::` and `::1`.
fn compatible_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    (s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1)).then(|| v4_of(s[6], s[7]))
}

/// The IPv4 address whose two halves are `hi` and `lo`.
fn v4_of(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// A fetch refused by the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The host as named in the URL.
    pub host: String,
    /// The address refused.
    pub addr: IpAddr,
    /// Why it is refused.
    pub class: AddressClass,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host_is_addr = self.host.trim_matches(['[', ']']) == self.addr.to_string();
        if host_is_addr {
            write!(f, "{} is {}", self.host, self.class.describe())?;
        } else {
            write!(
                f,
                "{} resolves to {}, {}",
                self.host,
                self.addr,
                self.class.describe()
            )?;
        }
        f.write_str(
            "; fetches to private networks are off (security.allow_private_networks, \
             FANFARE_CRAWLER_ALLOW_PRIVATE_NETWORKS)",
        )
    }
}

impl StdError for Blocked {}

/// The first [`Blocked`] in `error`'s source chain.
pub fn find_blocked<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a Blocked> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(b) = e.downcast_ref::<Blocked>() {
            return Some(b);
        }
        // io::Error hides what it wraps from `source()`.
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(b) = find_blocked(inner) {
                    return Some(b);
                }
            }
        }
        current = e.source();
    }
    None
}

/// Which addresses outbound fetches may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPolicy {
    allow_private: bool,
    runtime_api: Option<IpAddr>,
    exceptions: Vec<IpAddr>,
}

impl Default for NetPolicy {
    /// Closed.
    fn default() -> Self {
        Self::closed()
    }
}

impl NetPolicy {
    /// Only public addresses (the production default). The Lambda runtime
    /// API's address (from `AWS_LAMBDA_RUNTIME_API`) is refused too.
    pub fn closed() -> Self {
        Self {
            allow_private: false,
            runtime_api: runtime_api_address(std::env::var("AWS_LAMBDA_RUNTIME_API").ok()),
            exceptions: Vec::new(),
        }
    }

    /// Every address (development, tests, crawling an intranet on purpose).
    pub fn open() -> Self {
        Self {
            allow_private: true,
            runtime_api: None,
            exceptions: Vec::new(),
        }
    }

    /// [`NetPolicy::open`] when `allow_private`, else [`NetPolicy::closed`].
    pub fn allowing_private(allow_private: bool) -> Self {
        if allow_private {
            Self::open()
        } else {
            Self::closed()
        }
    }

    /// This policy, also letting `ip` through (one known internal host).
    pub fn with_exception(mut self, ip: IpAddr) -> Self {
        self.exceptions.push(ip);
        self
    }

    /// Whether private networks are open.
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// Why `ip` may not be reached, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<AddressClass> {
        if self.allow_private || self.exceptions.contains(&ip) {
            return None;
        }
        if Some(ip) == self.runtime_api {
            return Some(AddressClass::LambdaRuntimeApi);
        }
        classify(ip)
    }

    /// Checks a URL whose host is an IP literal (names are checked when
    /// they resolve).
    pub fn check_url(&self, url: &Url) -> Result<(), Blocked> {
        let ip = match url.host() {
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        match self.refusal(ip) {
            Some(class) => Err(Blocked {
                host: url.host_str().unwrap_or_default().to_string(),
                addr: ip,
                class,
            }),
            None => Ok(()),
        }
    }

    /// Sets the guard on `builder`: the resolver, a redirect policy that
    /// follows at most `max_redirects` hops and checks each, and no proxy.
    /// An open policy only sets the redirect limit.
    pub fn apply(
        &self,
        builder: reqwest::ClientBuilder,
        max_redirects: usize,
    ) -> reqwest::ClientBuilder {
        if self.allow_private {
            return builder.redirect(redirect::Policy::limited(max_redirects));
        }
        let policy = Arc::new(self.clone());
        let hops = policy.clone();
        builder
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { policy }))
            .redirect(redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > max_redirects {
                    return attempt.error(TooManyRedirects(max_redirects));
                }
                match hops.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(blocked) => attempt.error(blocked),
                }
            }))
    }
}

/// Why [`NetPolicy::check_target`] refused a target.
#[derive(Debug)]
pub enum TargetRefused {
    /// The target is (or resolves to) an address the policy refuses.
    Blocked(Blocked),
    /// The target's name did not resolve.
    Unresolved {
        /// The host as named in the URL.
        host: String,
        /// The resolver's error.
        error: std::io::Error,
    },
}

impl NetPolicy {
    /// For a fetch through a proxy: refuses `url` when its host is an IP
    /// literal the policy refuses, or a name any of whose addresses the
    /// policy refuses. An open policy checks nothing (and resolves
    /// nothing). The proxy resolves the name again when it connects, so a
    /// name that changes its answers between the two (DNS rebinding) is
    /// the proxy's to refuse.
    pub async fn check_target(&self, url: &Url) -> Result<(), TargetRefused> {
        if self.allow_private {
            return Ok(());
        }
        self.check_url(url).map_err(TargetRefused::Blocked)?;
        let Some(Host::Domain(host)) = url.host() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let found = tokio::net::lookup_host((host, port))
            .await
            .map_err(|error| TargetRefused::Unresolved {
                host: host.to_string(),
                error,
            })?;
        for addr in found {
            if let Some(class) = self.refusal(addr.ip()) {
                return Err(TargetRefused::Blocked(Blocked {
                    host: host.to_string(),
                    addr: addr.ip(),
                    class,
                }));
            }
        }
        Ok(())
    }
}

/// The error a guarded client's redirect policy gives past the limit (the
/// same condition as reqwest's own `limited` policy).
#[derive(Debug)]
pub struct TooManyRedirects(pub usize);

impl fmt::Display for TooManyRedirects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "more than {} redirects", self.0)
    }
}

impl StdError for TooManyRedirects {}

fn runtime_api_address(value: Option<String>) -> Option<IpAddr> {
    let value = value?;
    value
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| value.parse::<IpAddr>())
        .ok()
}

/// Resolves with the system resolver, then keeps only the addresses the
/// policy allows; refuses the name when none is left.
struct GuardedResolver {
    policy: Arc<NetPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.refusal(a.ip()) {
                    Some(class) => {
                        refused.get_or_insert((a.ip(), class));
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                if let Some((addr, class)) = refused {
                    return Err(Box::new(Blocked { host, addr, class }) as Box<_>);
                }
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<AddressClass> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn every_non_public_range_is_classified() {
        use AddressClass::*;
        let cases = [
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("169.254.169.254", Some(LinkLocal)),
            ("169.254.170.2", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("10.1.2.3", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("fd00::1", Some(Private)),
            ("fc00::1", Some(Private)),
            ("100.64.0.1", Some(SharedAddressSpace)),
            ("100.127.255.254", Some(SharedAddressSpace)),
            ("0.0.0.0", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("224.0.0.1", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("0.1.2.3", Some(Reserved)),
            ("255.255.255.255", Some(Reserved)),
            ("240.0.0.1", Some(Reserved)),
            ("192.0.2.5", Some(Reserved)),
            ("2001:db8::1", Some(Reserved)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::10.0.0.1", Some(Private)),
            ("64:ff9b::a9fe:a9fe", Some(LinkLocal)),
            // 6to4: judged by the IPv4 address after 2002:.
            ("2002:7f00:0001::", Some(Loopback)),
            ("2002:7f00:1::1", Some(Loopback)),
            ("2002:a9fe:a9fe::1", Some(LinkLocal)),
            ("2002:0a00:0001:1::1", Some(Private)),
            ("2002:c0a8:0101::", Some(Private)),
            ("2002:6440:0001::", Some(SharedAddressSpace)),
            ("2002::", Some(Unspecified)),
            ("2002:e000:0001::", Some(Multicast)),
            ("2002:0808:0808::", None),
            ("2002:5db8:d822::1", None),
            // IPv4-translated ::ffff:0:a.b.c.d (not IPv4-mapped ::ffff:a.b.c.d).
            ("::ffff:0:7f00:1", Some(Loopback)),
            ("::ffff:0:a9fe:a9fe", Some(LinkLocal)),
            ("::ffff:0:10.0.0.1", Some(Private)),
            ("::ffff:0:0.0.0.0", Some(Unspecified)),
            ("::ffff:0:8.8.8.8", None),
            ("93.184.216.34", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("2606:4700::1111", None),
            ("::ffff:93.184.216.34", None),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn ip_literal_urls_are_checked_and_names_are_left_to_the_resolver() {
        let closed = NetPolicy {
            allow_private: false,
            runtime_api: None,
            exceptions: vec![],
        };
        let err = closed
            .check_url(&Url::parse("http://127.0.0.1:8080/metrics").unwrap())
            .unwrap_err();
        assert_eq!(err.class, AddressClass::Loopback);
        assert!(
            err.to_string()
                .starts_with("127.0.0.1 is a loopback address"),
            "{err}"
        );
        let err = closed
            .check_url(&Url::parse("http://[::1]:8080/").unwrap())
            .unwrap_err();
        assert_eq!(err.class, AddressClass::Loopback);
        assert!(closed
            .check_url(&Url::parse("http://localhost/").unwrap())
            .is_ok());
        assert!(closed
            .check_url(&Url::parse("https://93.184.216.34/").unwrap())
            .is_ok());
        assert!(NetPolicy::open()
            .check_url(&Url::parse("http://127.0.0.1/").unwrap())
            .is_ok());
        let one = closed.clone().with_exception("127.0.0.2".parse().unwrap());
        assert!(one
            .check_url(&Url::parse("http://127.0.0.2/").unwrap())
            .is_ok());
        assert!(one
            .check_url(&Url::parse("http://127.0.0.1/").unwrap())
            .is_err());
    }

    #[test]
    fn the_lambda_runtime_api_address_is_refused_even_when_public() {
        let policy = NetPolicy {
            allow_private: false,
            runtime_api: runtime_api_address(Some("198.51.99.7:9001".into())),
            exceptions: vec![],
        };
        assert_eq!(
            policy.refusal("198.51.99.7".parse().unwrap()),
            Some(AddressClass::LambdaRuntimeApi)
        );
        assert_eq!(
            runtime_api_address(Some("127.0.0.1:9001".into())),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(runtime_api_address(Some("garbage".into())), None);
    }

    #[tokio::test]
    async fn a_proxied_target_is_checked_by_its_resolved_addresses() {
        let closed = NetPolicy {
            allow_private: false,
            runtime_api: None,
            exceptions: vec![],
        };
        for url in [
            "http://localhost:8080/",
            "http://127.0.0.1/",
            "http://[::1]/",
        ] {
            match closed.check_target(&Url::parse(url).unwrap()).await {
                Err(TargetRefused::Blocked(b)) => assert_eq!(b.class, AddressClass::Loopback),
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(closed
            .check_target(&Url::parse("http://93.184.216.34/").unwrap())
            .await
            .is_ok());
        assert!(NetPolicy::open()
            .check_target(&Url::parse("http://localhost/").unwrap())
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_name_resolving_only_to_loopback_is_refused_by_the_resolver() {
        let resolver = GuardedResolver {
            policy: Arc::new(NetPolicy {
                allow_private: false,
                runtime_api: None,
                exceptions: vec![],
            }),
        };
        let err = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved"),
            Err(e) => e,
        };
        let blocked = find_blocked(err.as_ref()).expect("a Blocked error");
        assert_eq!(blocked.class, AddressClass::Loopback);
        assert!(
            blocked.to_string().starts_with("localhost resolves to "),
            "{blocked}"
        );
    }
}
