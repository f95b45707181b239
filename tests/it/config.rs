//! Configuration errors name the schedule and the key; the CLI lists them all.

use std::process::{Command, Output};

use fanfare::Settings;

use crate::helpers::{config_toml, schedule, ConfigFile};

/// `fanfare check-config --config FILE` with the environment variables
/// `env` set.
fn check_config(file: &ConfigFile, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .args(["check-config", "--config"])
        .arg(file.path())
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn problems(schedules: &str) -> Vec<String> {
    match Settings::from_toml(&config_toml("postgres://x@127.0.0.1/db", schedules)) {
        Ok(_) => panic!("configuration should be invalid"),
        Err(e) => e.0,
    }
}

#[test]
fn every_problem_is_listed_with_its_schedule_and_key() {
    let found = problems(
        r#"
[[schedules]]
name = "nightly"
cron = "61 * * * * *"
invoker = "lambda"
pages = { urls = ["https://ok.example/a", "ftp://nope"] }
extract = { price = "..bad" }
page_timeout = "soon"

[[schedules]]
name = "tz"
cron = "0 0 3 * * *"
timezone = "Mars/Base"
invoker = "sideways"
pages = { sitemap = "https://ok.example/sitemap.xml", http = "https://ok.example/x" }

[[schedules.notify]]
webhook = { url = "https://hooks.example/x", secret = "no-prefix" }

[[schedules]]
name = "nightly"
invoker = "local"
pages = { urls = [] }
"#,
    );
    let expect = [
        r#"schedule "nightly": cron "61 * * * * *": seconds must be 0-59"#,
        r#"schedule "nightly": function: is required with invoker = "lambda""#,
        r#"schedule "nightly": pages.urls[1]: "ftp://nope" must be an http or https URL"#,
        r#"schedule "nightly": extract.price: "..bad" is not a CSS selector"#,
        r#"schedule "nightly": page_timeout: "soon" is not a duration"#,
        r#"schedule "tz": timezone: unknown time zone "Mars/Base""#,
        r#"schedule "tz": invoker: "sideways" must be "lambda" or "local""#,
        r#"schedule "tz": pages: must have exactly one of urls, sitemap, http or lambda"#,
        r#"schedule "tz": notify[0].webhook.secret: must start with "whsec_""#,
        r#"schedule "nightly": name is used by more than one schedule"#,
    ];
    for e in expect {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "missing {e:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}

#[test]
fn an_unknown_policy_word_is_named_with_its_key_and_every_allowed_word() {
    let words = schedule("words")
        .text("catchup", "sometimes")
        .text("overlap", "queue")
        .text("compare", "bytes")
        .notify_block("[[schedules.notify]]\nstdout = {}\nwhen = \"never\"\n");
    let found = problems(&words.to_string());
    assert_eq!(
        found,
        [
            r#"schedule "words": catchup: "sometimes" must be "skip", "once" or "all""#,
            r#"schedule "words": overlap: "queue" must be "skip", "allow", "buffer_one" or "cancel_previous""#,
            r#"schedule "words": compare: "bytes" must be "fields" or "content""#,
            r#"schedule "words": notify[0].when: "never" must be "always" or "changes""#,
        ]
    );
}

#[test]
fn unknown_keys_and_missing_secrets_are_named() {
    let err = Settings::from_toml("[server]\nlisten = \"127.0.0.1:0\"\npublik_url = \"x\"\n")
        .unwrap_err();
    assert!(err.to_string().contains("publik_url"), "{err}");

    let err = Settings::from_toml(
        "[server]\npublic_url = \"http://a.example\"\n[database]\nurl = \"postgres://x@h/d\"\n[security]\ncallback_secret = \"short\"\n",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("security.callback_secret: is 5 bytes; it must be at least 32"),
        "{text}"
    );
    assert!(text.contains("security.admin_token: is required"), "{text}");
}

#[test]
fn check_config_exits_nonzero_listing_every_problem_and_zero_when_valid() {
    let bad = ConfigFile::write(&config_toml(
        "postgres://x@127.0.0.1/db",
        "[[schedules]]\nname = \"nightly\"\ncron = \"61 * * * * *\"\ninvoker = \"local\"\npages = { urls = [] }\nmax_attempts = 0\n",
    ));
    let out = check_config(&bad, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"schedule "nightly": cron "61 * * * * *": seconds must be 0-59"#),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"schedule "nightly": max_attempts: must be at least 1"#),
        "{stderr}"
    );

    let good = ConfigFile::write(&config_toml(
        "postgres://x@127.0.0.1/db",
        "[[schedules]]\nname = \"nightly\"\ncron = \"0 0 3 * * *\"\ntimezone = \"America/Chicago\"\ninvoker = \"local\"\npages = { urls = [\"https://a.example/\"] }\n",
    ));
    let out = check_config(&good, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A secret given through the environment never shows up in the output.
    let secret = "super-secret-admin-token-value";
    let out = check_config(&bad, &[("FANFARE__SECURITY__ADMIN_TOKEN", secret)]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
}

#[test]
fn check_config_names_an_admin_token_shorter_than_32_characters() {
    let short = "short-admin-token-20";
    let file = ConfigFile::write(&fanfare_testkit::config_toml_with(
        "postgres://x@127.0.0.1/db",
        0,
        5,
        crate::helpers::CALLBACK_SECRET,
        short,
        "",
    ));
    let out = check_config(&file, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("security.admin_token: is 20 characters; it must be at least 32"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(short),
        "the token itself is not shown: {stderr}"
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fanfare.toml");
    let settings = Settings::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings.schedules.len(), 2);
    assert_eq!(
        settings.server.callback_url(),
        "https://fanfare.example.com/v1/callbacks"
    );
}

#[test]
fn hardening_keys_have_safe_defaults_and_bad_values_are_named() {
    let base = |security_extra: &str, rest: &str| {
        format!(
            "[server]\npublic_url = \"http://a.example\"\n{rest}\n[database]\nurl = \"postgres://x@h/d\"\n[security]\ncallback_secret = \"{}\"\nadmin_token = \"{}\"\n{security_extra}\n",
            "s".repeat(32),
            "t".repeat(32),
        )
    };
    let settings = Settings::from_toml(&base(
        "",
        "[[schedules]]\nname = \"s\"\ninvoker = \"local\"\npages = { urls = [] }\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!settings.security.allow_private_networks);
    assert!(settings.security.previous_callback_secrets.is_empty());
    assert_eq!(settings.local.concurrency, 16);
    assert_eq!(settings.server.header_timeout.as_secs(), 10);
    assert_eq!(settings.server.body_timeout.as_secs(), 30);
    // Longer than the AWS load balancer's 60 s idle timeout.
    assert!(settings.server.idle_timeout.as_secs() > 60);
    assert_eq!(settings.server.max_connections, 4096);
    assert_eq!(settings.server.max_event_streams, 256);
    assert_eq!(settings.server.max_event_streams_per_session, 8);
    let schedule = &settings.schedules[0];
    assert_eq!(schedule.max_document_bytes, 50 * 1024 * 1024);
    assert!(!schedule.sitemap_any_host);

    let err = Settings::from_toml(&base(
        "previous_callback_secrets = [\"too-short\"]\n[local]\nconcurrency = 0",
        "header_timeout = \"0s\"\nmax_connections = 0\nmax_event_streams_per_session = 0\n[[schedules]]\nname = \"s\"\ninvoker = \"local\"\npages = { urls = [] }\nmax_document_bytes = 10\n",
    ))
    .unwrap_err();
    let text = err.to_string();
    for expected in [
        "server.header_timeout: \"0s\" must be longer than zero",
        "server.max_connections: must be at least 1",
        "server.max_event_streams_per_session: must be at least 1",
        "security.previous_callback_secrets[0]: is 9 bytes; it must be at least 32",
        "local.concurrency: must be at least 1",
        "schedule \"s\": max_document_bytes: must be at least 1024",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
}

#[test]
fn politeness_keys_are_checked_and_named() {
    let found = problems(
        "[[schedules]]\nname = \"p\"\ninvoker = \"local\"\npages = { urls = [] }\nper_host_rate = \"fast\"\nper_host_in_flight = 0\nuser_agent = \"bad\\u0007agent\"\n",
    );
    let expect = [
        r#"schedule "p": per_host_in_flight: must be at least 1"#,
        r#"schedule "p": per_host_rate: "fast" must look like "5/s", "30/min" or "100/h""#,
        r#"schedule "p": user_agent: "bad\u{7}agent" must be printable ASCII"#,
    ];
    for e in expect {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "missing {e:?} in {found:#?}"
        );
    }
}

#[test]
fn the_politeness_section_gives_every_schedule_its_defaults() {
    let base = format!(
        "[server]\npublic_url = \"http://a.example\"\n[database]\nurl = \"postgres://x@h/d\"\n[security]\ncallback_secret = \"{}\"\nadmin_token = \"{}\"\n",
        crate::helpers::CALLBACK_SECRET,
        crate::helpers::ADMIN_TOKEN
    );
    let schedules = "[[schedules]]\nname = \"a\"\ninvoker = \"local\"\npages = { urls = [] }\n\n[[schedules]]\nname = \"b\"\ninvoker = \"local\"\npages = { urls = [] }\nper_host_in_flight = 5\nobey_robots = false\nuser_agent = \"other/3\"\n";
    let plain = Settings::from_toml(&format!("{base}{schedules}")).unwrap();
    let a = plain.schedule("a").unwrap();
    assert_eq!(a.per_host_in_flight, 8);
    assert_eq!(a.per_host_interval, std::time::Duration::ZERO);
    assert!(a.obey_robots);
    assert_eq!(a.robots_agent(), "fanfare-crawler");

    let polite = Settings::from_toml(&format!(
        "{base}[politeness]\nper_host_in_flight = 3\nper_host_rate = \"30/min\"\nuser_agent = \"acme-bot/1.0 (+https://acme.example)\"\n{schedules}"
    ))
    .unwrap();
    let (a, b) = (polite.schedule("a").unwrap(), polite.schedule("b").unwrap());
    assert_eq!(a.per_host_in_flight, 3);
    assert_eq!(a.per_host_interval, std::time::Duration::from_secs(2));
    assert!(a.obey_robots);
    assert_eq!(a.robots_agent(), "acme-bot");
    assert_eq!(b.per_host_in_flight, 5, "a schedule's own key wins");
    assert_eq!(b.per_host_interval, std::time::Duration::from_secs(2));
    assert!(!b.obey_robots);
    assert_eq!(b.robots_agent(), "other");
    assert_eq!(b.user_agent.as_deref(), Some("other/3"));
}

#[test]
fn compare_and_when_default_to_fields_and_always_and_other_values_name_their_key() {
    let schedule = |extra: &str, when: &str| {
        format!("[[schedules]]\nname = \"s\"\ninvoker = \"local\"\npages = {{ urls = [] }}\n{extra}\n[[schedules.notify]]\nstdout = {{}}\n{when}\n[[schedules.notify]]\nstdout = {{}}\nwhen = \"changes\"\n")
    };
    let settings =
        Settings::from_toml(&config_toml("postgres://x@127.0.0.1/db", &schedule("", "")))
            .unwrap_or_else(|e| panic!("{e}"));
    let s = &settings.schedules[0];
    assert_eq!(s.compare, fanfare::config::Compare::Fields);
    let whens: Vec<_> = s.notify.iter().map(|n| n.when).collect();
    assert_eq!(
        whens,
        [
            fanfare::config::NotifyWhen::Always,
            fanfare::config::NotifyWhen::Changes
        ]
    );
    let settings = Settings::from_toml(&config_toml(
        "postgres://x@127.0.0.1/db",
        &schedule("compare = \"content\"", "when = \"always\""),
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        settings.schedules[0].compare,
        fanfare::config::Compare::Content
    );

    let found = problems(&schedule("compare = \"title\"", "when = \"sometimes\""));
    assert_eq!(
        found,
        [
            r#"schedule "s": compare: "title" must be "fields" or "content""#,
            r#"schedule "s": notify[0].when: "sometimes" must be "always" or "changes""#,
        ]
    );
}

#[test]
fn trusted_proxies_and_the_lockout_threshold_are_read_and_bad_values_named() {
    let base = |server: &str, security: &str| {
        format!(
            "[server]\npublic_url = \"http://a.example\"\n{server}\n[database]\nurl = \"postgres://x@h/d\"\n[security]\ncallback_secret = \"{}\"\nadmin_token = \"{}\"\n{security}\n",
            "s".repeat(32),
            "t".repeat(32),
        )
    };
    let settings = Settings::from_toml(&base("", "")).unwrap_or_else(|e| panic!("{e}"));
    assert!(settings.server.trusted_proxies.is_empty());
    assert_eq!(settings.security.lockout_after_failures, 10);
    assert_eq!(settings.security.lockout_first.as_secs(), 1);
    assert_eq!(settings.security.lockout_max.as_secs(), 15 * 60);

    // A TOML list, or one comma-separated string (as FANFARE__SERVER__TRUSTED_PROXIES gives it).
    for list in [
        "[\"10.0.0.0/16\", \"192.0.2.1\", \"2001:db8::/32\"]",
        "\"10.0.0.0/16, 192.0.2.1,2001:db8::/32\"",
    ] {
        let settings = Settings::from_toml(&base(
            &format!("trusted_proxies = {list}"),
            "lockout_after_failures = 3",
        ))
        .unwrap_or_else(|e| panic!("{list}: {e}"));
        let nets: Vec<String> = settings
            .server
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            nets,
            ["10.0.0.0/16", "192.0.2.1/32", "2001:db8::/32"],
            "{list}"
        );
        assert_eq!(settings.security.lockout_after_failures, 3);
    }

    let text = Settings::from_toml(&base(
        "trusted_proxies = [\"10.0.0.0/33\", \"alb\"]",
        "lockout_after_failures = 0\nlockout_first = \"2m\"\nlockout_max = \"1m\"",
    ))
    .unwrap_err()
    .to_string();
    for expected in [
        "server.trusted_proxies: \"10.0.0.0/33\" is not an address or a CIDR block",
        "server.trusted_proxies: \"alb\" is not an address or a CIDR block",
        "security.lockout_after_failures: must be at least 1",
        "security.lockout_max: must be at least security.lockout_first",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
}

#[test]
fn trusted_proxies_can_come_from_one_environment_variable() {
    let file = ConfigFile::write(&config_toml("postgres://x@127.0.0.1/db", ""));
    for (value, ok) in [
        ("10.0.0.0/16", true),
        ("10.0.0.0/16, 192.0.2.1", true),
        ("10.0.0.0/16,load-balancer", false),
    ] {
        let out = check_config(&file, &[("FANFARE__SERVER__TRUSTED_PROXIES", value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{value}: {stderr}");
        if !ok {
            assert!(
                stderr.contains("server.trusted_proxies: \"load-balancer\" is not an address"),
                "{stderr}"
            );
        }
    }
}

#[test]
fn each_mistake_in_an_extract_table_is_named_with_its_field_and_key() {
    let found = problems(
        &schedule("fields")
            .raw(
                r#"
[schedules.extract]
ok_text = "h1"
ok_table = { css = ".tag", all = true, type = "number", regex = "(\\d+)" }
ok_meta = { meta = "og:price:amount", type = "number" }
ok_jsonld = { jsonld = "Product.offers.price", all = true }
colour = { css = "a", colour = "red" }
kind = { css = ".price", type = "price" }
neither = { attr = "href" }
both = { css = "a", jsonld = "Product.name" }
bad_css = { css = "a[", attr = "href" }
bad_regex = { css = ".price", regex = "([0-9]+" }
long_regex = { css = ".price", regex = "REGEX" }
attr_on_meta = { meta = "og:image", attr = "href" }
bad_path = { jsonld = "Product..price" }
all_word = { css = "a", all = "yes" }
number = 12
"#
                .replace("REGEX", &"a".repeat(1100))
                .as_str(),
            )
            .to_string(),
    );
    let at = r#"schedule "fields": extract."#;
    let expect = [
        "colour.colour: is not a key of a field table; it takes \"css\", \"meta\", \"jsonld\", \"attr\", \"all\", \"type\" or \"regex\"".to_string(),
        r#"kind.type: "price" must be "text" or "number""#.into(),
        "neither: a table needs one of css, meta or jsonld".into(),
        "both: has css and jsonld; give exactly one of css, meta or jsonld".into(),
        r#"bad_css: "a[" is not a CSS selector"#.into(),
        r#"bad_regex: regex "([0-9]+" is not a regular expression"#.into(),
        "long_regex: regex is 1100 bytes long; at most 1024".into(),
        "attr_on_meta: attr goes only with css".into(),
        r#"bad_path: jsonld "Product..price" must be a schema.org type then properties"#.into(),
        "all_word.all: must be true or false".into(),
        "number: must be a CSS selector string or a table".into(),
    ];
    for e in &expect {
        assert!(
            found.iter().any(|f| f.starts_with(&format!("{at}{e}"))),
            "missing {e:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}

#[test]
fn render_keys_default_to_never_and_every_mistake_is_named_at_its_key() {
    use fanfare::config::RenderMode;
    use fanfare_crawler::contract::ResourceType;

    let valid = [
        schedule("plain").to_string(),
        schedule("shop")
            .text("render", "auto")
            .text("wait_for", "#price")
            .key("block", r#"["image", "stylesheet"]"#)
            .text("render_timeout", "45s")
            .key("render_after", 5)
            .to_string(),
        schedule("spa")
            .lambda("crawler")
            .text("render", "always")
            .text("browser_function", "crawler-browser")
            .to_string(),
        "[local]\nbrowsers = 4\n".to_string(),
    ]
    .concat();
    let settings = Settings::from_toml(&config_toml("postgres://x@127.0.0.1/db", &valid))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings.local.browsers, 4);
    let plain = &settings.schedule("plain").unwrap().render;
    assert_eq!(plain.mode, RenderMode::Never);
    assert_eq!(
        plain.block,
        [ResourceType::Image, ResourceType::Font, ResourceType::Media]
    );
    assert_eq!(plain.timeout, std::time::Duration::from_secs(20));
    assert_eq!(plain.render_after, 3);
    let shop = &settings.schedule("shop").unwrap().render;
    assert_eq!(shop.mode, RenderMode::Auto);
    assert_eq!(shop.wait_for.as_deref(), Some("#price"));
    assert_eq!(shop.block, [ResourceType::Image, ResourceType::Stylesheet]);
    assert_eq!(shop.request().timeout_ms, 45_000);
    assert_eq!(shop.render_after, 5);
    let spa = &settings.schedule("spa").unwrap().render;
    assert_eq!(spa.browser_function.as_deref(), Some("crawler-browser"));

    let found = problems(
        &[
            schedule("words")
                .text("render", "sometimes")
                .text("wait_for", "..bad")
                .key("block", r#"["image", "video"]"#)
                .text("render_timeout", "5m")
                .key("render_after", 0)
                .to_string(),
            schedule("lambda")
                .lambda("crawler")
                .text("render", "auto")
                .to_string(),
            schedule("never")
                .text("wait_for", "#x")
                .text("browser_function", "f")
                .to_string(),
            schedule("always")
                .text("render", "always")
                .key("render_after", 2)
                .to_string(),
            "[local]\nbrowsers = 0\n".to_string(),
        ]
        .concat(),
    );
    let expect = [
        r#"schedule "words": render: "sometimes" must be "never", "always" or "auto""#,
        r#"schedule "words": wait_for: "..bad" is not a CSS selector"#,
        r#"schedule "words": block: "video" must be "image", "font", "media" or "stylesheet""#,
        r#"schedule "words": render_timeout: "5m" is longer than the most a render may take, 1m"#,
        r#"schedule "words": render_after: must be at least 1"#,
        r#"schedule "lambda": browser_function: is required with render = "auto" and invoker = "lambda""#,
        r#"schedule "never": wait_for: is set but the schedule never renders"#,
        r#"schedule "never": browser_function: is set but the schedule never renders"#,
        r#"schedule "always": render_after: is only used with render = "auto""#,
        "local.browsers: must be at least 1",
    ];
    for e in expect {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "missing {e:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}

#[test]
fn conditional_defaults_to_true_and_is_named_where_it_cannot_apply() {
    let schedule = |extra: &str| {
        format!(
            "[[schedules]]\nname = \"s\"\ninvoker = \"local\"\npages = {{ urls = [] }}\n{extra}\n"
        )
    };
    let read = |extra: &str| {
        Settings::from_toml(&config_toml("postgres://x@127.0.0.1/db", &schedule(extra)))
            .unwrap_or_else(|e| panic!("{e}"))
            .schedules[0]
            .conditional
    };
    assert!(read(""));
    assert!(!read("conditional = false"));
    // Off where it cannot apply is fine; asked for there, it is named.
    assert!(!read("conditional = false\nrender = \"always\""));
    assert_eq!(
        problems(&schedule("conditional = true\nrender = \"always\"")),
        [
            r#"schedule "s": conditional: is true but every page is rendered (render = "always"), and rendered pages are always fetched in full"#
        ]
    );
    let crawl = "[[schedules]]\nname = \"s\"\ninvoker = \"local\"\npages = { crawl = \"https://a.example/\" }\nconditional = true\n";
    assert_eq!(
        problems(crawl),
        [
            r#"schedule "s": conditional: is true but the schedule follows links, and a run that follows links fetches every page in full"#
        ]
    );
    let found = problems(&schedule("conditional = \"sometimes\""));
    assert!(
        found.iter().any(|p| p.contains("conditional")),
        "the bad value is named by its key: {found:?}"
    );
}

#[test]
fn retention_keys_default_to_90_days_every_10_minutes_and_bad_values_are_named() {
    let toml = config_toml("postgres://x@127.0.0.1/db", &schedule("plain").to_string());
    let s = Settings::from_toml(&toml).unwrap();
    let day = std::time::Duration::from_secs(24 * 3600);
    assert_eq!(s.retention.keep_runs_for, 90 * day);
    assert_eq!(s.retention.prune_every, std::time::Duration::from_secs(600));
    assert_eq!(s.retention.batch_rows, 5000);
    assert_eq!(s.keep_runs_for("plain"), 90 * day);

    let own = schedule("own").text("keep_runs_for", "7days");
    let s = Settings::from_toml(&config_toml(
        "postgres://x@127.0.0.1/db",
        &format!(
            "[retention]\nkeep_runs_for = \"30days\"\n{}{}",
            schedule("plain"),
            own
        ),
    ))
    .unwrap();
    assert_eq!(s.keep_runs_for("plain"), 30 * day);
    assert_eq!(s.keep_runs_for("own"), 7 * day);
    assert_eq!(s.keep_runs_for("gone-from-the-config"), 30 * day);

    let bad = ConfigFile::write(&config_toml(
        "postgres://x@127.0.0.1/db",
        &format!(
            "[retention]\nkeep_runs_for = \"forever\"\nprune_every = \"0s\"\nbatch_rows = 0\n{}",
            schedule("own").text("keep_runs_for", "a while")
        ),
    ));
    let out = check_config(&bad, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for problem in [
        r#"retention.keep_runs_for: "forever" is not a duration"#,
        r#"retention.prune_every: "0s" must be longer than zero"#,
        "retention.batch_rows: must be at least 1",
        r#"schedule "own": keep_runs_for: "a while" is not a duration"#,
    ] {
        assert!(stderr.contains(problem), "missing {problem:?} in {stderr}");
    }
    let too_many = config_toml(
        "postgres://x@127.0.0.1/db",
        "[retention]\nbatch_rows = 1000000\n",
    );
    let err = Settings::from_toml(&too_many).unwrap_err().to_string();
    assert!(
        err.contains("retention.batch_rows: 1000000 is more than 100000"),
        "{err}"
    );
}
