//! Reading the config from toml's spanned parse tree (no serde: one small reader instead of
//! a monomorphised deserializer per struct, which cost ~150 KB of the device binary).
//!
//! Each struct is read by a function that asks a [`Table`] for its keys; the table records
//! which keys were used, and `done` reports the rest as unknown. Type, range, missing and
//! unknown-key errors use serde's wording, at the value (or table) they are about; all of
//! them are collected, not just the first.

use super::duration::{self, Dur};
use super::schema::{Env, PortRef};
use miniserde::json::{Number, Object, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Errors found while reading: byte offset and message.
#[derive(Default)]
pub struct Errors(RefCell<Vec<(usize, String)>>);

impl Errors {
    pub fn push(&self, offset: usize, message: String) {
        self.0.borrow_mut().push((offset, message));
    }
    pub fn take(self) -> Vec<(usize, String)> {
        self.0.into_inner()
    }
}

type Val<'a> = Spanned<DeValue<'a>>;

/// serde's words for what was found (`serde::de::Unexpected`).
fn unexpected(v: &DeValue) -> String {
    match v {
        DeValue::String(s) => format!("string {s:?}"),
        DeValue::Integer(i) => format!("integer `{}`", i.as_str()),
        DeValue::Float(f) => format!("floating point `{}`", f.as_str()),
        DeValue::Boolean(b) => format!("boolean `{b}`"),
        DeValue::Datetime(_) => "datetime".into(),
        DeValue::Array(_) => "a list".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

/// The allowed key `key` is most likely a misspelling of: within two edits, or a third of
/// its length for long keys.
fn closest<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    let limit = (key.len() / 3).max(2);
    allowed
        .iter()
        .map(|a| (edit_distance(key, a), *a))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// What a key should hold, in words a user reads, with an example of it written.
#[derive(Clone)]
enum Expect {
    Str,
    Bool,
    Port,
    /// A number 0-65535 that is not a port.
    Small,
    Count,
    Duration,
    PortRef,
    Map,
    List(Box<Expect>),
}

impl Expect {
    /// Port wording for the keys that hold ports.
    fn for_u16(key: &str) -> Expect {
        match key.contains("port") || matches!(key, "static" | "to") {
            true => Expect::Port,
            false => Expect::Small,
        }
    }

    /// What is expected, and an example value.
    fn words(&self) -> (String, String) {
        let (what, example) = match self {
            Expect::Str => ("a string", "\"…\""),
            Expect::Bool => ("true or false", "true"),
            Expect::Port => ("a port number 1-65535, without quotes", "9002"),
            Expect::Small => ("a whole number 0-65535, without quotes", "3"),
            Expect::Count => ("a whole number, without quotes", "3"),
            Expect::Duration => ("a duration in quotes", "\"5s\""),
            Expect::PortRef => ("a port label or number", "\"http\""),
            Expect::Map => ("a table", "{ … }"),
            Expect::List(item) => {
                let (_, example) = item.words();
                return ("a list".to_string(), format!("[{example}]"));
            }
        };
        (what.to_string(), example.to_string())
    }

    fn message(&self, key: &str, got: &Val) -> String {
        let (what, example) = self.words();
        let got = unexpected(got.get_ref());
        format!("{key} must be {what}, e.g. {key} = {example}; got {got}")
    }
}

fn integer(v: &DeValue) -> Option<i64> {
    let i = v.as_integer()?;
    i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
}

pub struct Table<'a> {
    table: &'a DeTable<'a>,
    /// Where the table starts (its header), for missing keys.
    at: usize,
    used: RefCell<Vec<&'a str>>,
    errors: &'a Errors,
}

impl<'a> Table<'a> {
    pub fn root(table: &'a Spanned<DeTable<'a>>, errors: &'a Errors) -> Table<'a> {
        Table {
            table: table.get_ref(),
            at: table.span().start,
            used: RefCell::new(Vec::new()),
            errors,
        }
    }

    fn get(&self, key: &'static str) -> Option<&'a Val<'a>> {
        let (_, v) = self
            .table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)?;
        self.used.borrow_mut().push(key);
        Some(v)
    }

    /// `key` holds the wrong kind of value: says what is expected, with an example.
    fn type_error(&self, v: &Val, key: &str, expected: Expect) {
        self.errors.push(v.span().start, expected.message(key, v));
    }

    /// An item of the list `key` is the wrong kind of value.
    fn item_error(&self, v: &Val, key: &str, expected: Expect) {
        let (what, example) = expected.words();
        self.errors.push(
            v.span().start,
            format!(
                "each item of {key} must be {what}, e.g. {key} = [{example}]; got {}",
                unexpected(v.get_ref())
            ),
        );
    }

    /// Reports keys no reader asked for, with the known key it most likely meant.
    pub fn done(self, allowed: &[&str]) {
        let used = self.used.borrow();
        for (k, _) in self.table.iter() {
            let key = k.get_ref().as_ref();
            if used.contains(&key) {
                continue;
            }
            let message = match closest(key, allowed) {
                Some(meant) => format!("unknown key `{key}`; did you mean `{meant}`?"),
                None => {
                    let list: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
                    format!("unknown key `{key}`; expected one of {}", list.join(", "))
                }
            };
            self.errors.push(k.span().start, message);
        }
    }

    /// Whether the key is written (without reading it).
    pub fn table_has(&self, key: &str) -> bool {
        self.table.iter().any(|(k, _)| k.get_ref().as_ref() == key)
    }

    /// A required key is absent; unless a misspelling of it is there, which `done`
    /// reports with a "did you mean" (one mistake, one error).
    pub fn missing(&self, key: &str) {
        let misspelt = self.table.iter().any(|(k, _)| {
            let written = k.get_ref().as_ref();
            written != key && closest(written, &[key]).is_some()
        });
        if !misspelt {
            self.errors.push(self.at, format!("missing field `{key}`"));
        }
    }

    pub fn string(&self, key: &'static str) -> Option<String> {
        let v = self.get(key)?;
        match v.get_ref().as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.type_error(v, key, Expect::Str);
                None
            }
        }
    }

    /// One of `choices`, by its name; anything else is reported as `validate` would
    /// (`what must be one of "a", "b"; got "c"`).
    pub fn choice<T: Copy>(
        &self,
        key: &'static str,
        what: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let v = self.get(key)?;
        let text = self.string(key)?;
        match choices.iter().find(|(name, _)| *name == text) {
            Some((_, value)) => Some(*value),
            None => {
                let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                self.errors.push(
                    v.span().start,
                    format!("{what} must be one of {}; got \"{text}\"", names.join(", ")),
                );
                None
            }
        }
    }

    pub fn string_or(&self, key: &'static str, default: &str) -> String {
        self.string(key).unwrap_or_else(|| default.to_string())
    }

    /// A required string; reported (and empty) when missing.
    pub fn required(&self, key: &'static str) -> String {
        if !self.table_has(key) {
            self.missing(key);
            return String::new();
        }
        self.string(key).unwrap_or_default()
    }

    pub fn bool(&self, key: &'static str) -> bool {
        self.bool_or(key, false)
    }

    /// A boolean whose absence means `default`.
    pub fn bool_or(&self, key: &'static str, default: bool) -> bool {
        let Some(v) = self.get(key) else {
            return default;
        };
        v.get_ref().as_bool().unwrap_or_else(|| {
            self.type_error(v, key, Expect::Bool);
            default
        })
    }

    fn int_in(&self, key: &'static str, max: i64, expected: Expect) -> Option<i64> {
        let v = self.get(key)?;
        match integer(v.get_ref()) {
            Some(i) if (0..=max).contains(&i) => Some(i),
            _ => {
                self.type_error(v, key, expected);
                None
            }
        }
    }

    pub fn u16(&self, key: &'static str) -> Option<u16> {
        self.int_in(key, i64::from(u16::MAX), Expect::for_u16(key))
            .map(|i| i as u16)
    }

    pub fn u32(&self, key: &'static str) -> Option<u32> {
        self.int_in(key, i64::from(u32::MAX), Expect::Count)
            .map(|i| i as u32)
    }

    pub fn dur(&self, key: &'static str) -> Option<Dur> {
        let v = self.get(key)?;
        let Some(text) = v.get_ref().as_str() else {
            self.type_error(v, key, Expect::Duration);
            return None;
        };
        match duration::parse(text) {
            Ok(d) => Some(Dur(d)),
            Err(e) => {
                self.errors.push(v.span().start, e);
                None
            }
        }
    }

    /// A port label or number (`9001` or `"9001"`).
    pub fn port_ref(&self, key: &'static str) -> Option<PortRef> {
        let v = self.get(key)?;
        if let Some(s) = v.get_ref().as_str() {
            return Some(PortRef(s.to_string()));
        }
        match integer(v.get_ref()) {
            Some(i) if (1..=65535).contains(&i) => Some(PortRef(i.to_string())),
            Some(i) => {
                self.errors
                    .push(v.span().start, format!("port {i} is out of range 1-65535"));
                None
            }
            None => {
                self.type_error(v, key, Expect::PortRef);
                None
            }
        }
    }

    /// An array whose items `item` converts; an item it refuses is reported as not
    /// `expected`.
    fn list<T>(
        &self,
        key: &'static str,
        expected: Expect,
        item: impl Fn(&'a Val<'a>) -> Option<T>,
    ) -> Vec<T> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let Some(items) = v.get_ref().as_array() else {
            self.type_error(v, key, Expect::List(Box::new(expected)));
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|i| {
                let converted = item(i);
                if converted.is_none() {
                    self.item_error(i, key, expected.clone());
                }
                converted
            })
            .collect()
    }

    pub fn strings(&self, key: &'static str) -> Vec<String> {
        self.list(key, Expect::Str, |v| {
            v.get_ref().as_str().map(str::to_string)
        })
    }

    pub fn u16s(&self, key: &'static str) -> Vec<u16> {
        self.list(key, Expect::Port, |v| {
            integer(v.get_ref()).and_then(|i| u16::try_from(i).ok())
        })
    }

    /// A table of strings (env, meta).
    pub fn env(&self, key: &'static str) -> Env {
        let mut out = Env::new();
        let Some(t) = self.table(key) else { return out };
        for (k, v) in t.table.iter() {
            match v.get_ref().as_str() {
                Some(s) => {
                    out.insert(k.get_ref().to_string(), s.to_string());
                }
                None => t.type_error(v, k.get_ref(), Expect::Str),
            }
        }
        out
    }

    /// A table of string lists (check headers).
    pub fn string_lists(&self, key: &'static str) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        let Some(t) = self.table(key) else { return out };
        for (k, _) in t.table.iter() {
            let name = k.get_ref().to_string();
            let values = t.strings_at(k.get_ref());
            out.insert(name, values);
        }
        out
    }

    fn strings_at(&self, key: &str) -> Vec<String> {
        let Some((_, v)) = self.table.iter().find(|(k, _)| k.get_ref().as_ref() == key) else {
            return Vec::new();
        };
        match v.get_ref().as_array() {
            Some(items) => items
                .iter()
                .filter_map(|i| i.get_ref().as_str().map(str::to_string))
                .collect(),
            None => {
                self.type_error(v, key, Expect::List(Box::new(Expect::Str)));
                Vec::new()
            }
        }
    }

    /// A free-form table, as the JSON object it will be sent as. A date or time cannot be
    /// JSON and is reported where it is written.
    pub fn json_object(&self, key: &'static str, what: &str) -> Object {
        let Some(v) = self.get(key) else {
            return Object::new();
        };
        match json(v, what, self.errors) {
            Value::Object(o) => o,
            _ => {
                self.type_error(v, key, Expect::Map);
                Object::new()
            }
        }
    }

    pub fn table(&self, key: &'static str) -> Option<Table<'a>> {
        let v = self.get(key)?;
        match v.get_ref().as_table() {
            Some(t) => Some(Table {
                table: t,
                at: v.span().start,
                used: RefCell::new(Vec::new()),
                errors: self.errors,
            }),
            None => {
                self.type_error(v, key, Expect::Map);
                None
            }
        }
    }

    /// An array of tables (`[[group]]`).
    pub fn tables(&self, key: &'static str) -> Vec<Table<'a>> {
        self.list(key, Expect::Map, |item| {
            item.get_ref().as_table().map(|t| Table {
                table: t,
                at: item.span().start,
                used: RefCell::new(Vec::new()),
                errors: self.errors,
            })
        })
    }

    /// A map of tables keyed by name (`envoy_gateway_bind_addresses`).
    pub fn named_tables(&self, key: &'static str) -> Vec<(String, Table<'a>)> {
        let Some(t) = self.table(key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in t.table.iter() {
            match v.get_ref().as_table() {
                Some(inner) => out.push((
                    k.get_ref().to_string(),
                    Table {
                        table: inner,
                        at: v.span().start,
                        used: RefCell::new(Vec::new()),
                        errors: self.errors,
                    },
                )),
                None => t.type_error(v, k.get_ref(), Expect::Map),
            }
        }
        out
    }
}

fn json(v: &Val, what: &str, errors: &Errors) -> Value {
    match v.get_ref() {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(_) => Value::Number(Number::I64(integer(v.get_ref()).unwrap_or(0))),
        DeValue::Float(f) => Value::Number(Number::F64(
            f.as_str().replace('_', "").parse().unwrap_or(0.0),
        )),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(_) => {
            errors.push(
                v.span().start,
                format!("{what} cannot hold a date or time: it is passed to Consul as JSON"),
            );
            Value::Null
        }
        DeValue::Array(items) => {
            Value::Array(items.iter().map(|i| json(i, what, errors)).collect())
        }
        DeValue::Table(t) => Value::Object(
            t.iter()
                .map(|(k, item)| (k.get_ref().to_string(), json(item, what, errors)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod spelling_tests {
    use super::*;

    #[test]
    fn a_misspelt_key_finds_the_key_it_meant_and_nothing_far_off() {
        assert_eq!(edit_distance("destinaton_name", "destination_name"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        let allowed = ["command", "args", "env", "kill_timeout"];
        assert_eq!(closest("comand", &allowed), Some("command"));
        assert_eq!(closest("kill_timout", &allowed), Some("kill_timeout"));
        assert_eq!(closest("nomad", &allowed), None);
    }
}
