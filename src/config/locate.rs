//! Finds where a config value was written, so semantic errors can say `file:line:col`.
//!
//! Validation names a value by its path (`group[1].service[0].port`); the spanned tree that
//! toml's parser builds maps that path back to byte offsets in the source.

use std::ops::Range;
use toml::de::{DeTable, DeValue};

/// One step of a path into the config: a key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    /// A key chosen by the user (a map entry such as an env var name).
    Name(String),
    Index(usize),
}

impl From<&'static str> for Seg {
    fn from(key: &'static str) -> Seg {
        Seg::Key(key)
    }
}

impl From<usize> for Seg {
    fn from(index: usize) -> Seg {
        Seg::Index(index)
    }
}

/// Builds a path: `path!["group", gi, "service", si, "port"]`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => {
        vec![$($crate::config::locate::Seg::from($seg)),*]
    };
}

/// Whether an error points at the value at a path or at its key (for map keys that are
/// themselves wrong, such as an invalid env var name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Value,
    Key,
}

pub struct Locator<'a> {
    source: &'a str,
    root: Option<toml::Spanned<DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    pub fn new(source: &'a str) -> Locator<'a> {
        Locator {
            source,
            root: DeTable::parse(source).ok(),
        }
    }

    /// A locator over a tree the caller already parsed from `source`.
    pub fn from_parsed(source: &'a str, root: toml::Spanned<DeTable<'a>>) -> Locator<'a> {
        Locator {
            source,
            root: Some(root),
        }
    }

    /// The span of the deepest part of `path` that exists in the source: the value itself,
    /// or the table that should have held a missing key. Never fails: the worst case is the
    /// start of the file.
    pub fn span(&self, path: &[Seg], target: Target) -> Range<usize> {
        let Some(root) = &self.root else {
            return 0..0;
        };
        let mut best = 0..0;
        let mut current: Option<&DeValue> = None;
        let mut table: &DeTable = root.get_ref();
        for (i, seg) in path.iter().enumerate() {
            let is_last = i + 1 == path.len();
            let found = match (seg, current) {
                (Seg::Key(k), _) => find_key(table, k),
                (Seg::Name(n), _) => find_key(table, n),
                (Seg::Index(index), Some(DeValue::Array(items))) => {
                    items.get(*index).map(|item| (item.span(), item))
                }
                (Seg::Index(_), _) => None,
            };
            let Some((key_span, value)) = found else {
                return best;
            };
            best = if is_last && target == Target::Key {
                key_span
            } else {
                value.span()
            };
            current = Some(value.get_ref());
            if let Some(DeValue::Table(t)) = current {
                table = t;
            }
        }
        best
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(self.source, offset)
    }
}

/// The span of `key` and its value in `table`.
fn find_key<'t, 'a>(
    table: &'t DeTable<'a>,
    key: &str,
) -> Option<(Range<usize>, &'t toml::Spanned<DeValue<'a>>)> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(k, v)| (k.span(), v))
}

/// 1-based line and column (in characters) of a byte offset in `source`.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "[agent]\nnode_name = \"x\"\n\n[[group]]\nname = \"a\"\n[[group]]\nname = \"b\"\n[[group.task]]\nname = \"t\"\n[group.task.env]\nBAD-NAME = \"1\"\n";

    fn at(path: Vec<Seg>, target: Target) -> (usize, usize) {
        let l = Locator::new(SRC);
        l.line_col(l.span(&path, target).start)
    }

    #[test]
    fn finds_values_in_arrays_of_tables() {
        assert_eq!(at(path!["agent", "node_name"], Target::Value), (2, 13));
        assert_eq!(at(path!["group", 1usize, "name"], Target::Value), (7, 8));
        assert_eq!(
            at(
                path!["group", 1usize, "task", 0usize, "name"],
                Target::Value
            ),
            (9, 8)
        );
    }

    #[test]
    fn points_at_keys_when_asked() {
        let p = vec![
            Seg::Key("group"),
            Seg::Index(1),
            Seg::Key("task"),
            Seg::Index(0),
            Seg::Key("env"),
            Seg::Name("BAD-NAME".into()),
        ];
        assert_eq!(at(p, Target::Key), (11, 1));
    }

    #[test]
    fn missing_key_points_at_its_table() {
        // group[0] has no `network`: the error goes to the `[[group]]` header of that group.
        assert_eq!(
            at(path!["group", 0usize, "network", "mode"], Target::Value),
            (4, 1)
        );
    }
}
