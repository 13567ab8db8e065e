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
        DeValue::Array(_) => "sequence".into(),
        DeValue::Table(_) => "map".into(),
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

    fn type_error(&self, v: &Val, expected: &str) {
        self.errors.push(
            v.span().start,
            format!(
                "invalid type: {}, expected {expected}",
                unexpected(v.get_ref())
            ),
        );
    }

    /// Reports keys no reader asked for: `unknown field `x`, expected one of ...`.
    pub fn done(self, allowed: &[&str]) {
        let used = self.used.borrow();
        for (k, _) in self.table.iter() {
            let key = k.get_ref().as_ref();
            if !used.contains(&key) {
                let list: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
                self.errors.push(
                    k.span().start,
                    format!("unknown field `{key}`, expected one of {}", list.join(", ")),
                );
            }
        }
    }

    /// Whether the key is written (without reading it).
    pub fn table_has(&self, key: &str) -> bool {
        self.table.iter().any(|(k, _)| k.get_ref().as_ref() == key)
    }

    pub fn missing(&self, key: &str) {
        self.errors.push(self.at, format!("missing field `{key}`"));
    }

    pub fn string(&self, key: &'static str) -> Option<String> {
        let v = self.get(key)?;
        match v.get_ref().as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.type_error(v, "a string");
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
            self.type_error(v, "a boolean");
            default
        })
    }

    fn int_in(&self, key: &'static str, max: i64, expected: &str) -> Option<i64> {
        let v = self.get(key)?;
        match integer(v.get_ref()) {
            Some(i) if (0..=max).contains(&i) => Some(i),
            Some(i) => {
                self.errors.push(
                    v.span().start,
                    format!("invalid value: integer `{i}`, expected {expected}"),
                );
                None
            }
            None => {
                self.type_error(v, expected);
                None
            }
        }
    }

    pub fn u16(&self, key: &'static str) -> Option<u16> {
        self.int_in(key, i64::from(u16::MAX), "u16")
            .map(|i| i as u16)
    }

    pub fn u32(&self, key: &'static str) -> Option<u32> {
        self.int_in(key, i64::from(u32::MAX), "u32")
            .map(|i| i as u32)
    }

    pub fn dur(&self, key: &'static str) -> Option<Dur> {
        let v = self.get(key)?;
        let Some(text) = v.get_ref().as_str() else {
            self.type_error(v, "a duration string such as \"5s\"");
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
                self.type_error(v, "a port label or a port number");
                None
            }
        }
    }

    /// An array whose items `item` converts; an item it refuses is reported as not
    /// `expected`.
    fn list<T>(
        &self,
        key: &'static str,
        expected: &str,
        item: impl Fn(&'a Val<'a>) -> Option<T>,
    ) -> Vec<T> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let Some(items) = v.get_ref().as_array() else {
            self.type_error(v, "a sequence");
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|i| {
                let converted = item(i);
                if converted.is_none() {
                    self.type_error(i, expected);
                }
                converted
            })
            .collect()
    }

    pub fn strings(&self, key: &'static str) -> Vec<String> {
        self.list(key, "a string", |v| {
            v.get_ref().as_str().map(str::to_string)
        })
    }

    pub fn u16s(&self, key: &'static str) -> Vec<u16> {
        self.list(key, "u16", |v| {
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
                None => t.type_error(v, "a string"),
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
                self.type_error(v, "a sequence");
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
                self.type_error(v, "a map");
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
                self.type_error(v, "a map");
                None
            }
        }
    }

    /// An array of tables (`[[group]]`).
    pub fn tables(&self, key: &'static str) -> Vec<Table<'a>> {
        self.list(key, "a map", |item| {
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
                None => t.type_error(v, "a map"),
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
