//! A benchmark's command line, read by its usage text.
//!
//! The usage text is the one place a benchmark's options are written: its
//! lines that start with `--` (after indentation) are the options.
//!
//! - `--name` alone is a switch: `false` unless given;
//! - `--name PLACEHOLDER` takes a value: a number when the placeholder is
//!   `N`, a comma-separated list when it ends in `,...` (`N,...`), text
//!   otherwise (`PATH`, `TEXT`, `MODE`);
//! - `[default: X]` at the end of the line is the value when the option is
//!   not given; without one the field is absent (an `Option` reads `None`).
//!
//! The options are deserialized into the benchmark's own `Args` (serde),
//! `--name-with-dashes` into the field `name_with_dashes`. A description
//! must not start with an upper-case word (it would read as a placeholder).

use anyhow::{anyhow, bail, ensure, Context};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// One option of a usage text.
#[derive(Debug)]
struct Spec {
    name: String,
    placeholder: Option<String>,
    default: Option<String>,
}

/// The options of `usage`; an option's description may go on over the
/// indented lines below it, `[default: X]` ending its last one.
fn specs(usage: &str) -> Vec<Spec> {
    let mut options: Vec<(String, String)> = Vec::new();
    for line in usage.lines() {
        let text = line.trim();
        if let Some(rest) = text.strip_prefix("--") {
            options.push((rest.to_string(), String::new()));
        } else if let Some((_, description)) = options.last_mut().filter(|_| !text.is_empty()) {
            description.push(' ');
            description.push_str(text);
        }
    }
    options
        .into_iter()
        .filter_map(|(first, more)| {
            let mut words = first.split_whitespace();
            let name = words.next()?.to_string();
            let placeholder = words
                .next()
                .filter(|w| {
                    w.starts_with(|c: char| c.is_ascii_uppercase())
                        && w.chars()
                            .all(|c| c.is_ascii_uppercase() || ",._".contains(c))
                })
                .map(str::to_string);
            let whole = format!("{first}{more}");
            let default = whole
                .trim_end()
                .strip_suffix(']')
                .and_then(|l| l.rsplit_once("[default: "))
                .map(|(_, d)| d.to_string());
            Some(Spec {
                name,
                placeholder,
                default,
            })
        })
        .collect()
}

/// `raw` as the JSON the placeholder says.
fn value(placeholder: &str, raw: &str) -> anyhow::Result<Value> {
    if let Some(item) = placeholder.strip_suffix(",...") {
        return raw
            .split(',')
            .map(|part| value(item, part.trim()))
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Value::Array);
    }
    if placeholder == "N" {
        let n: serde_json::Number = raw
            .parse()
            .map_err(|_| anyhow!("{raw:?} is not a number"))?;
        return Ok(Value::Number(n));
    }
    Ok(Value::String(raw.to_string()))
}

/// Every option of `usage` with its value from `args` (without the
/// program's name) or its default, in the order of `usage`; `--bench`
/// (which `cargo bench` passes) is ignored.
fn effective(
    usage: &str,
    args: impl IntoIterator<Item = String>,
) -> anyhow::Result<Vec<(String, Value)>> {
    let specs = specs(usage);
    let mut given = Map::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--bench" {
            continue;
        }
        let Some(flag) = arg.strip_prefix("--") else {
            bail!("unexpected argument {arg:?}\n\n{usage}");
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, v)) => (name, Some(v.to_string())),
            None => (flag, None),
        };
        let spec = specs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| anyhow!("unknown option --{name}\n\n{usage}"))?;
        let parsed = match &spec.placeholder {
            None => {
                ensure!(inline.is_none(), "--{name} takes no value");
                Value::Bool(true)
            }
            Some(placeholder) => {
                let raw = match inline {
                    Some(raw) => raw,
                    None => args
                        .next()
                        .with_context(|| format!("--{name} needs a value ({placeholder})"))?,
                };
                value(placeholder, &raw).with_context(|| format!("--{name}"))?
            }
        };
        given.insert(name.to_string(), parsed);
    }
    let mut all = Vec::new();
    for spec in specs {
        let chosen = match (given.remove(&spec.name), &spec.placeholder, &spec.default) {
            (Some(v), _, _) => v,
            (None, None, _) => Value::Bool(false),
            (None, Some(placeholder), Some(default)) => value(placeholder, default)
                .with_context(|| format!("the default of --{}", spec.name))?,
            (None, Some(_), None) => continue,
        };
        all.push((spec.name, chosen));
    }
    Ok(all)
}

/// The options of `args` (without the program's name) by `usage`,
/// deserialized.
pub fn parse<T: DeserializeOwned>(
    usage: &str,
    args: impl IntoIterator<Item = String>,
) -> anyhow::Result<T> {
    let fields: Map<String, Value> = effective(usage, args)?
        .into_iter()
        .map(|(name, v)| (name.replace('-', "_"), v))
        .collect();
    serde_json::from_value(Value::Object(fields)).map_err(|e| anyhow!("{e}\n\n{usage}"))
}

/// The options of `args` written out whole, defaults included, as a
/// command line that runs the same measurement again.
pub fn command_line(usage: &str, args: impl IntoIterator<Item = String>) -> anyhow::Result<String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut line = Vec::new();
    for (name, v) in effective(usage, args)? {
        match v {
            Value::Bool(false) => {}
            Value::Bool(true) => line.push(format!("--{name}")),
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(text).collect();
                line.push(format!("--{name} {}", items.join(",")));
            }
            v => line.push(format!("--{name} {}", text(&v))),
        }
    }
    Ok(line.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: &str = "\
test: what a benchmark's options look like

  --pages N              pages in the run [default: 100]
  --clients N,...        client counts, one measurement each [default: 8,32]
  --pgbench PATH         the pgbench binary, a description long enough to go
                         on over two lines [default: pgbench]
  --app-threads N        worker threads (default: one per core)
  --skip-pgbench         measure the daemon only
";

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Args {
        pages: usize,
        clients: Vec<usize>,
        pgbench: String,
        app_threads: Option<usize>,
        skip_pgbench: bool,
    }

    fn args(line: &str) -> anyhow::Result<Args> {
        parse(USAGE, line.split_whitespace().map(str::to_string))
    }

    #[test]
    fn options_not_given_take_their_defaults_and_switches_are_off() {
        assert_eq!(
            args("--bench").unwrap(),
            Args {
                pages: 100,
                clients: vec![8, 32],
                pgbench: "pgbench".into(),
                app_threads: None,
                skip_pgbench: false,
            }
        );
    }

    #[test]
    fn given_options_are_read_by_their_placeholders() {
        assert_eq!(
            args("--pages 20 --clients=4,5,6 --pgbench /bin/pgb --app-threads 2 --skip-pgbench")
                .unwrap(),
            Args {
                pages: 20,
                clients: vec![4, 5, 6],
                pgbench: "/bin/pgb".into(),
                app_threads: Some(2),
                skip_pgbench: true,
            }
        );
    }

    #[test]
    fn the_command_line_names_every_option_set_defaults_included() {
        let line = command_line(USAGE, ["--pages", "20", "--skip-pgbench"].map(String::from));
        assert_eq!(
            line.unwrap(),
            "--pages 20 --clients 8,32 --pgbench pgbench --skip-pgbench"
        );
    }

    #[test]
    fn unknown_options_missing_values_and_bad_numbers_are_errors() {
        for line in [
            "--page 20",
            "--pages",
            "--pages many",
            "--pages -3",
            "--skip-pgbench=yes",
            "stray",
        ] {
            assert!(args(line).is_err(), "{line} was accepted");
        }
    }
}
