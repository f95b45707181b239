//! Extraction: a request's field specs ([`FieldSpec`]) compiled once per
//! page, then applied to the parsed document.
//!
//! A field's values come from one source: a CSS selector's matches (their
//! text, or an attribute), `<meta>` tags (their `content`), or the page's
//! schema.org JSON-LD (a path such as `Product.offers.price`). Each value
//! may then go through a `regex` and be turned into a `type`; the field is
//! the first value, or with `all` every value as a JSON array. Output is
//! bounded: each text at [`MAX_TEXT_BYTES`], each field at
//! [`MAX_VALUES_PER_FIELD`] values.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use scraper::{ElementRef, Html, Selector};
use serde_json::{Map, Number, Value};
use url::Url;

use crate::contract::{CrawlError, ErrorKind, FieldSpec, FieldTable, ValueType};

/// Extracted text (a field's value or the title) longer than this many
/// bytes is cut at a character boundary, so that a selector matching a
/// whole page cannot push the report over
/// [`MAX_REPORT_BYTES`](crate::contract::MAX_REPORT_BYTES).
pub const MAX_TEXT_BYTES: usize = 8 * 1024;

/// The most values one `all` field holds; later matches are left out.
pub const MAX_VALUES_PER_FIELD: usize = 256;

/// The longest `regex` pattern accepted, in bytes.
pub const MAX_REGEX_BYTES: usize = 1024;

/// The most memory one compiled `regex` may take (the `regex` crate's size
/// limit): a short pattern with large repetitions cannot blow up.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A `<script>` of JSON-LD larger than this is skipped rather than parsed.
const MAX_JSONLD_BYTES: usize = 2 * 1024 * 1024;

/// A request's fields, compiled: selectors parsed, regexes built, paths
/// split. Built before the page is fetched, so a bad spec fails the same
/// way whatever the page.
#[derive(Debug)]
pub struct Extractor {
    fields: Vec<(String, Field)>,
    jsonld: bool,
}

/// One compiled field.
#[derive(Debug)]
struct Field {
    source: Source,
    attr: Option<String>,
    all: bool,
    value_type: Option<ValueType>,
    regex: Option<Regex>,
}

#[derive(Debug)]
enum Source {
    Css(Selector),
    Meta(String),
    JsonLd(JsonLdPath),
}

/// `Product.offers.price`: nodes whose `@type` is `Product`, then the
/// properties `offers` and `price`.
#[derive(Debug)]
struct JsonLdPath {
    node_type: String,
    properties: Vec<String>,
}

/// What is wrong with a field spec, in words that follow the field's key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

impl Extractor {
    /// Compiles every field of `extract`; the first bad one fails as
    /// [`ErrorKind::InvalidSelector`] naming the field and its mistake.
    pub fn new(extract: &BTreeMap<String, FieldSpec>) -> Result<Self, CrawlError> {
        let fields = extract
            .iter()
            .map(|(name, spec)| {
                Field::compile(spec)
                    .map(|f| (name.clone(), f))
                    .map_err(|e| {
                        CrawlError::new(
                            ErrorKind::InvalidSelector,
                            format!("field {name:?}: {e}"),
                            false,
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let jsonld = fields
            .iter()
            .any(|(_, f)| matches!(f.source, Source::JsonLd(_)));
        Ok(Self { fields, jsonld })
    }

    /// The page's title and every field's value. Synchronous: `Html` is
    /// `!Send`, so it must never live across an `.await`. `base` is the
    /// page's final URL, which `href` and `src` are resolved against.
    pub fn extract(
        &self,
        document: &Html,
        base: &Url,
    ) -> (Option<String>, BTreeMap<String, Value>) {
        let title = title(document);
        // Parsed once per page, and only when a field asks for it.
        let jsonld = if self.jsonld {
            jsonld_blocks(document)
        } else {
            Vec::new()
        };
        let fields = self
            .fields
            .iter()
            .map(|(name, field)| (name.clone(), field.extract(document, base, &jsonld)))
            .collect();
        (title, fields)
    }
}

/// Checks one field spec as [`Extractor::new`] would: the daemon names a
/// bad one at configuration time, before anything runs.
pub fn check_field(spec: &FieldSpec) -> Result<(), SpecError> {
    Field::compile(spec).map(drop)
}

impl Field {
    fn compile(spec: &FieldSpec) -> Result<Self, SpecError> {
        let table = match spec {
            FieldSpec::Selector(css) => {
                return Ok(Field {
                    source: Source::Css(selector(css)?),
                    attr: None,
                    all: false,
                    value_type: None,
                    regex: None,
                })
            }
            FieldSpec::Table(table) => table,
        };
        let FieldTable {
            css,
            meta,
            jsonld,
            attr,
            all,
            value_type,
            regex,
        } = table;
        let source = match (css, meta, jsonld) {
            (Some(css), None, None) => Source::Css(selector(css)?),
            (None, Some(meta), None) => {
                if meta.trim().is_empty() {
                    return Err(SpecError(
                        "meta must name a property or name, e.g. \"og:price:amount\"".into(),
                    ));
                }
                Source::Meta(meta.trim().to_string())
            }
            (None, None, Some(path)) => Source::JsonLd(jsonld_path(path)?),
            (None, None, None) => {
                return Err(SpecError(
                    "a table needs one of css, meta or jsonld (where the value comes from)".into(),
                ))
            }
            _ => {
                let given: Vec<&str> = [("css", css), ("meta", meta), ("jsonld", jsonld)]
                    .iter()
                    .filter(|(_, v)| v.is_some())
                    .map(|(k, _)| *k)
                    .collect();
                return Err(SpecError(format!(
                    "has {}; give exactly one of css, meta or jsonld",
                    given.join(" and ")
                )));
            }
        };
        let attr = match attr {
            None => None,
            Some(_) if !matches!(source, Source::Css(_)) => {
                return Err(SpecError(
                    "attr goes only with css (meta gives its content, jsonld its value)".into(),
                ))
            }
            Some(a) if a.trim().is_empty() => {
                return Err(SpecError(
                    "attr must name an attribute, e.g. \"href\"".into(),
                ))
            }
            Some(a) => Some(a.trim().to_ascii_lowercase()),
        };
        let regex = regex.as_deref().map(compile_regex).transpose()?;
        Ok(Field {
            source,
            attr,
            all: *all,
            value_type: *value_type,
            regex,
        })
    }

    /// This field's value on `document`.
    fn extract(&self, document: &Html, base: &Url, jsonld: &[Value]) -> Value {
        let limit = if self.all { MAX_VALUES_PER_FIELD } else { 1 };
        let mut raw: Vec<Raw<'_>> = Vec::new();
        match &self.source {
            Source::Css(selector) => {
                for element in document.select(selector) {
                    if raw.len() == limit {
                        break;
                    }
                    let value = match &self.attr {
                        None => Some(collapse_whitespace(element.text())),
                        Some(attr) => element.value().attr(attr).map(|v| attribute(attr, v, base)),
                    };
                    // An element without the attribute is not a match.
                    raw.extend(value.map(Raw::Text));
                }
            }
            Source::Meta(name) => {
                raw.extend(
                    meta_contents(document, name)
                        .take(limit)
                        .map(|c| Raw::Text(cut(c.trim()))),
                );
            }
            Source::JsonLd(path) => {
                let mut found = Vec::new();
                path.find(jsonld, limit, &mut found);
                raw.extend(found.into_iter().map(Raw::Json));
            }
        }
        let mut values = raw.into_iter().map(|r| self.finish(r));
        if self.all {
            Value::Array(values.filter(|v| !v.is_null()).collect())
        } else {
            values.next().unwrap_or(Value::Null)
        }
    }

    /// A raw value through `regex` and `type`.
    fn finish(&self, raw: Raw<'_>) -> Value {
        let raw = match &self.regex {
            None => raw,
            Some(regex) => {
                let text = raw.text();
                match regex.captures(&text) {
                    Some(caps) => {
                        let m = caps.get(1).or_else(|| caps.get(0));
                        Raw::Text(m.map_or_else(String::new, |m| m.as_str().to_string()))
                    }
                    None => return Value::Null,
                }
            }
        };
        match (self.value_type, raw) {
            (Some(ValueType::Number), Raw::Json(Value::Number(n))) => Value::Number(n.clone()),
            (Some(ValueType::Number), raw) => {
                parse_number(&raw.text()).map_or(Value::Null, Value::Number)
            }
            (Some(ValueType::Text), raw) => Value::String(raw.text()),
            (None, Raw::Text(text)) => Value::String(text),
            (None, Raw::Json(value)) => bounded_json(value),
        }
    }
}

/// A value as found, before `regex` and `type`.
enum Raw<'a> {
    Text(String),
    Json(&'a Value),
}

impl Raw<'_> {
    fn text(&self) -> String {
        match self {
            Raw::Text(text) => text.clone(),
            Raw::Json(Value::String(s)) => cut(s.trim()),
            Raw::Json(other) => cut(&other.to_string()),
        }
    }
}

/// A JSON-LD value as a field's value: strings cut at [`MAX_TEXT_BYTES`];
/// an array or object whose JSON is longer than that becomes its cut text.
fn bounded_json(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(cut(s.trim())),
        Value::Array(_) | Value::Object(_) => {
            let text = value.to_string();
            if text.len() <= MAX_TEXT_BYTES {
                value.clone()
            } else {
                Value::String(cut(&text))
            }
        }
        other => other.clone(),
    }
}

fn selector(css: &str) -> Result<Selector, SpecError> {
    Selector::parse(css).map_err(|e| SpecError(format!("{css:?} is not a CSS selector ({e})")))
}

fn compile_regex(pattern: &str) -> Result<Regex, SpecError> {
    if pattern.len() > MAX_REGEX_BYTES {
        return Err(SpecError(format!(
            "regex is {} bytes long; at most {MAX_REGEX_BYTES}",
            pattern.len()
        )));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let reason = e.to_string();
            // The crate's message spans lines (the pattern, a caret); one is enough.
            let reason = reason.lines().last().unwrap_or_default().trim();
            SpecError(format!(
                "regex {pattern:?} is not a regular expression ({reason})"
            ))
        })
}

fn jsonld_path(path: &str) -> Result<JsonLdPath, SpecError> {
    let mut parts = path.trim().split('.').map(str::trim);
    let bad = || {
        SpecError(format!(
            "jsonld {path:?} must be a schema.org type then properties, e.g. \"Product.offers.price\""
        ))
    };
    let node_type = parts.next().filter(|t| !t.is_empty()).ok_or_else(bad)?;
    let properties: Vec<String> = parts.map(str::to_string).collect();
    if properties.iter().any(String::is_empty) {
        return Err(bad());
    }
    Ok(JsonLdPath {
        node_type: node_type.to_string(),
        properties,
    })
}

impl JsonLdPath {
    /// Up to `limit` values at this path, in document order: the blocks in
    /// page order, each searched depth first (a node before what it holds,
    /// arrays and `@graph` in order) for nodes of the type, and from each
    /// node the properties followed through objects and arrays.
    fn find<'a>(&self, blocks: &'a [Value], limit: usize, out: &mut Vec<&'a Value>) {
        let mut nodes = Vec::new();
        for block in blocks {
            nodes_of_type(block, &self.node_type, &mut nodes);
        }
        for node in nodes {
            let mut current = vec![node];
            for property in &self.properties {
                let mut next = Vec::new();
                for value in current {
                    if let Some(v) = value.as_object().and_then(|o| o.get(property)) {
                        flatten(v, &mut next);
                    }
                }
                current = next;
            }
            for value in current {
                if out.len() == limit {
                    return;
                }
                // `{"@value": "55.00", "@type": "..."}` is a literal with a datatype.
                let value = value
                    .as_object()
                    .and_then(|o| o.get("@value"))
                    .unwrap_or(value);
                out.push(value);
            }
        }
    }
}

/// An array's elements (nested arrays too), or the value itself.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

/// Every object under `value` whose `@type` is (or lists) `wanted`, depth
/// first in document order. A type given as an IRI
/// (`https://schema.org/Product`) matches by its last segment.
fn nodes_of_type<'a>(value: &'a Value, wanted: &str, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            if has_type(map, wanted) {
                out.push(value);
            }
            for v in map.values() {
                nodes_of_type(v, wanted, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| nodes_of_type(v, wanted, out)),
        _ => {}
    }
}

fn has_type(node: &Map<String, Value>, wanted: &str) -> bool {
    let is = |t: &Value| {
        t.as_str().is_some_and(|t| {
            t == wanted
                || t.rsplit(['/', '#'])
                    .next()
                    .is_some_and(|last| last == wanted)
        })
    };
    match node.get("@type") {
        Some(Value::Array(types)) => types.iter().any(is),
        Some(t) => is(t),
        None => false,
    }
}

static TITLE: LazyLock<Selector> =
    LazyLock::new(|| Selector::parse("title").expect("`title` is a valid selector"));
static META: LazyLock<Selector> =
    LazyLock::new(|| Selector::parse("meta[content]").expect("a valid selector"));
static JSONLD: LazyLock<Selector> =
    LazyLock::new(|| Selector::parse("script[type]").expect("a valid selector"));

const HTML_NAMESPACE: &str = "http://www.w3.org/1999/xhtml";

/// The page's `<title>`; an SVG `<title>` is a tooltip, not the page's.
fn title(document: &Html) -> Option<String> {
    document
        .select(&TITLE)
        .find(|element| &*element.value().name.ns == HTML_NAMESPACE)
        .map(|element| collapse_whitespace(element.text()))
        .filter(|title| !title.is_empty())
}

/// The `content` of each `<meta>` whose `property`, `name` or `itemprop`
/// is `name`, ASCII case-insensitively, in page order.
fn meta_contents<'a>(document: &'a Html, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    document
        .select(&META)
        .filter_map(move |element: ElementRef<'a>| {
            let e = element.value();
            let named = ["property", "name", "itemprop"]
                .iter()
                .filter_map(|a| e.attr(a))
                .any(|v| v.trim().eq_ignore_ascii_case(name));
            named.then(|| e.attr("content")).flatten()
        })
}

/// Every `<script type="application/ld+json">` that parses as JSON, in
/// page order; one that does not (or is over [`MAX_JSONLD_BYTES`]) is
/// skipped, as a browser would.
fn jsonld_blocks(document: &Html) -> Vec<Value> {
    document
        .select(&JSONLD)
        .filter(|s| {
            s.value().attr("type").is_some_and(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/ld+json"))
            })
        })
        .filter_map(|script| {
            let mut text = String::new();
            for piece in script.text() {
                if text.len() + piece.len() > MAX_JSONLD_BYTES {
                    return None;
                }
                text.push_str(piece);
            }
            serde_json::from_str(&text).ok()
        })
        .collect()
}

/// An attribute's value, trimmed and cut; `href` and `src` resolved against
/// the page's URL (kept as written when they do not resolve).
fn attribute(name: &str, value: &str, base: &Url) -> String {
    let value = value.trim();
    if matches!(name, "href" | "src") {
        if let Ok(url) = base.join(value) {
            return cut(url.as_str());
        }
    }
    cut(value)
}

/// `text` cut at [`MAX_TEXT_BYTES`] on a character boundary.
fn cut(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_string();
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Joins the text pieces as they are (`9<b>.99</b>` is one word), collapses
/// runs of whitespace to one space, trims, and stops at [`MAX_TEXT_BYTES`]
/// on a character boundary.
pub(crate) fn collapse_whitespace<'a>(pieces: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    let mut pending_space = false;
    for c in pieces.flat_map(str::chars) {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        let needed = c.len_utf8() + usize::from(pending_space);
        if out.len() + needed > MAX_TEXT_BYTES {
            break;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

/// The first number in `text`, read whatever the locale writes it like;
/// `None` when there is none.
///
/// The number starts at the first digit (a `-` or `−` right before it makes
/// it negative) and runs over digits and separators: `.`, `,`, and as
/// thousands separators only, a space, no-break space, narrow no-break
/// space or `'` followed by exactly three digits.
///
/// - With both `.` and `,`, the last one written is the decimal separator
///   and the other groups thousands: `1.299,00` and `1,299.00` are 1299.
/// - With one of them written more than once, it groups thousands:
///   `1,299,000` and `1.299.000` are 1299000.
/// - Written once, it groups thousands when exactly three digits follow it
///   and the digits before it are not just `0`: `1,299` and `1.299` are
///   both 1299 (a price is far more often 1299 than 1.299), `0.299` is
///   0.299; otherwise it is the decimal separator: `9,99` and `9.99` are
///   9.99, `12,5` is 12.5.
///
/// A whole number comes out as an integer (`1299`, not `1299.0`), so that
/// it reads as the text `"1299"` does.
pub fn parse_number(text: &str) -> Option<Number> {
    let chars: Vec<char> = text.chars().collect();
    let start = chars.iter().position(char::is_ascii_digit)?;
    let negative = start > 0 && matches!(chars[start - 1], '-' | '−');
    // Digit groups and the separator written before each (after the first).
    let mut groups: Vec<String> = vec![String::new()];
    let mut seps: Vec<char> = Vec::new();
    let mut i = start;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() {
            groups.last_mut()?.push(c);
            i += 1;
            continue;
        }
        let digits_after = chars[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let takes = match c {
            '.' | ',' => digits_after > 0,
            ' ' | '\u{a0}' | '\u{202f}' | '\'' | '’' => digits_after == 3,
            _ => false,
        };
        if !takes {
            break;
        }
        seps.push(c);
        groups.push(String::new());
        i += 1;
    }
    let decimal = decimal_separator(&seps, &groups);
    let mut number = String::new();
    if negative {
        number.push('-');
    }
    for (k, group) in groups.iter().enumerate() {
        if k > 0 && Some(k - 1) == decimal {
            number.push('.');
        }
        number.push_str(group);
    }
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
        // Exact: a whole f64 under 2^53 is an integer.
        return Some(Number::from(value as i64));
    }
    Number::from_f64(value)
}

/// Which separator (by its index in `seps`) is the decimal one, if any.
fn decimal_separator(seps: &[char], groups: &[String]) -> Option<usize> {
    let marks: Vec<usize> = (0..seps.len())
        .filter(|&k| matches!(seps[k], '.' | ','))
        .collect();
    let &last = marks.last()?;
    let kind = seps[last];
    let same = marks.iter().filter(|&&k| seps[k] == kind).count();
    if same > 1 {
        return None;
    }
    if marks.iter().any(|&k| seps[k] != kind) {
        // Both written: the last is the decimal separator.
        return Some(last);
    }
    // Written once: it groups thousands when three digits follow a lead
    // that is not just zeros.
    let before = &groups[last];
    let after = &groups[last + 1];
    let groups_thousands = after.len() == 3 && !before.trim_start_matches('0').is_empty();
    (!groups_thousands).then_some(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> Option<String> {
        parse_number(text).map(|n| n.to_string())
    }

    #[test]
    fn numbers_are_read_whatever_the_locale_writes_them_like() {
        for (text, want) in [
            ("1.299,00 €", Some("1299")),
            ("$1,299.00", Some("1299")),
            ("1,299", Some("1299")),
            ("1.299", Some("1299")),
            ("0.299", Some("0.299")),
            ("0,5", Some("0.5")),
            ("9,99", Some("9.99")),
            ("9.99", Some("9.99")),
            ("12,5 %", Some("12.5")),
            ("1\u{a0}299,00\u{a0}€", Some("1299")),
            ("1\u{202f}299,50 €", Some("1299.5")),
            ("CHF 1'299.50", Some("1299.5")),
            ("1,234,567", Some("1234567")),
            ("1.234.567,89", Some("1234567.89")),
            ("-5", Some("-5")),
            ("−2,50 €", Some("-2.5")),
            ("Price: 42", Some("42")),
            ("In stock: 3 left, was 5", Some("3")),
            ("12 items", Some("12")),
            ("1299.", Some("1299")),
            ("no price", None),
            ("", None),
            ("-", None),
        ] {
            assert_eq!(number(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn a_huge_number_is_still_a_number_and_never_panics() {
        let long = "9".repeat(400);
        assert_eq!(number(&long), None, "beyond f64 is no number");
        assert_eq!(
            number("123456789012345678901").as_deref(),
            Some("1.2345678901234568e+20")
        );
    }

    #[test]
    fn whitespace_inside_extracted_text_is_collapsed_and_trimmed() {
        let html = "<p class=a>\n  Hello \t\n <b> big </b>\n world  </p><p class=a>second</p>\
                    <span class=price> 9<b>.99</b> </span>";
        let extract = BTreeMap::from([
            ("a".to_string(), FieldSpec::from(".a")),
            ("price".to_string(), FieldSpec::from(".price")),
        ]);
        let base = Url::parse("https://a.example/").unwrap();
        let (title, fields) = Extractor::new(&extract)
            .unwrap()
            .extract(&Html::parse_document(html), &base);
        assert_eq!(title, None);
        assert_eq!(fields["a"], "Hello big world");
        assert_eq!(fields["price"], "9.99");
    }

    #[test]
    fn empty_title_is_none_and_svg_title_is_ignored() {
        assert_eq!(
            title(&Html::parse_document("<title>  \n </title><p>x</p>")),
            None
        );
        assert_eq!(
            title(&Html::parse_document(
                "<body><svg><title>icon</title></svg><p>no title</p></body>"
            )),
            None
        );
    }

    #[test]
    fn long_extracted_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_BYTES);
        for text in [collapse_whitespace([long.as_str()].into_iter()), cut(&long)] {
            assert!(text.len() <= MAX_TEXT_BYTES);
            assert!(text.len() > MAX_TEXT_BYTES - 4);
            assert!(text.chars().all(|c| c == 'é'));
        }
    }

    fn table(t: FieldTable) -> FieldSpec {
        FieldSpec::Table(t)
    }

    #[test]
    fn each_mistake_in_a_spec_is_named() {
        let css = |s: &str| Some(s.to_string());
        for (spec, want) in [
            (FieldSpec::from("a["), "is not a CSS selector"),
            (
                table(FieldTable::default()),
                "needs one of css, meta or jsonld",
            ),
            (
                table(FieldTable {
                    css: css("a"),
                    jsonld: css("Product.name"),
                    ..Default::default()
                }),
                "has css and jsonld; give exactly one",
            ),
            (
                table(FieldTable {
                    meta: css("og:image"),
                    attr: css("href"),
                    ..Default::default()
                }),
                "attr goes only with css",
            ),
            (
                table(FieldTable {
                    css: css("a"),
                    regex: css("(unclosed"),
                    ..Default::default()
                }),
                "regex \"(unclosed\" is not a regular expression",
            ),
            (
                table(FieldTable {
                    css: css("a"),
                    regex: Some("a".repeat(2000)),
                    ..Default::default()
                }),
                "regex is 2000 bytes long; at most 1024",
            ),
            (
                table(FieldTable {
                    css: css("a"),
                    regex: css("a{1000}{1000}"),
                    ..Default::default()
                }),
                "is not a regular expression",
            ),
            (
                table(FieldTable {
                    jsonld: css("Product..price"),
                    ..Default::default()
                }),
                "must be a schema.org type then properties",
            ),
            (
                table(FieldTable {
                    meta: css(" "),
                    ..Default::default()
                }),
                "meta must name",
            ),
        ] {
            let error = check_field(&spec).unwrap_err();
            assert!(error.0.contains(want), "{spec:?}: {error}");
        }
    }
}
