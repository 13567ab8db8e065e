//! An ordered JSON value and a printer with Go's `json.Indent` layout (2 spaces, one key per
//! line, `"key": value`, empty containers as `{}`/`[]`), because Consul's bootstrap has a
//! fixed key order and users diff the files.

/// A JSON value whose objects keep their key order.
#[derive(Clone, Debug, PartialEq)]
pub enum J {
    Obj(Vec<(String, J)>),
    Arr(Vec<J>),
    Str(String),
    Int(i64),
    /// A number as written in a parsed fragment (kept as text, as Go's json.Indent does).
    Num(String),
    Bool(bool),
    Null,
}

/// Builds an object: `obj([("a", J::Int(1))])`.
pub fn obj<const N: usize>(pairs: [(&str, J); N]) -> J {
    J::Obj(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

pub fn s(text: &str) -> J {
    J::Str(text.to_string())
}

impl J {
    /// Appends `key: value` to an object (no-op on other values).
    pub fn push(&mut self, key: &str, value: J) {
        if let J::Obj(pairs) = self {
            pairs.push((key.to_string(), value));
        }
    }

    pub fn pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let pad = |out: &mut String, n: usize| {
            for _ in 0..n {
                out.push_str("  ");
            }
        };
        match self {
            J::Str(text) => write_string(out, text),
            J::Int(i) => out.push_str(&i.to_string()),
            J::Num(text) => out.push_str(text),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Null => out.push_str("null"),
            J::Arr(items) if items.is_empty() => out.push_str("[]"),
            J::Obj(pairs) if pairs.is_empty() => out.push_str("{}"),
            J::Arr(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    pad(out, depth + 1);
                    item.write(out, depth + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                pad(out, depth);
                out.push(']');
            }
            J::Obj(pairs) => {
                out.push_str("{\n");
                for (i, (key, value)) in pairs.iter().enumerate() {
                    pad(out, depth + 1);
                    write_string(out, key);
                    out.push_str(": ");
                    value.write(out, depth + 1);
                    out.push_str(if i + 1 < pairs.len() { ",\n" } else { "\n" });
                }
                pad(out, depth);
                out.push('}');
            }
        }
    }
}

/// JSON string escaping as Go's encoder does it (`<`, `>` and `&` as \u escapes too).
fn write_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Parses JSON keeping object key order (for verbatim fragments from `Proxy.Config`).
/// Errors name the byte offset and what was expected.
pub fn parse(text: &str) -> Result<J, String> {
    let mut p = Parser {
        bytes: text.as_bytes(),
        at: 0,
    };
    let value = p.value()?;
    p.space();
    if p.at < p.bytes.len() {
        return Err(p.error("end of input"));
    }
    Ok(value)
}

/// Comma-separated values, as Consul's `envoy_extra_*_json` settings hold them.
pub fn parse_list(text: &str) -> Result<Vec<J>, String> {
    match parse(&format!("[{text}]")) {
        Ok(J::Arr(items)) => Ok(items),
        Ok(_) => Err("expected JSON values".into()),
        // Offsets count the added '['.
        Err(e) => Err(e),
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, expected: &str) -> String {
        format!("expected {expected} at byte {}", self.at)
    }

    fn space(&mut self) {
        while self.at < self.bytes.len() && self.bytes[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.space();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<J, String> {
        self.space();
        match self.bytes.get(self.at) {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => self.string().map(J::Str),
            Some(b't') => self.word("true", J::Bool(true)),
            Some(b'f') => self.word("false", J::Bool(false)),
            Some(b'n') => self.word("null", J::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("a JSON value")),
        }
    }

    fn word(&mut self, word: &str, value: J) -> Result<J, String> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error(word))
        }
    }

    fn number(&mut self) -> Result<J, String> {
        let start = self.at;
        while self.at < self.bytes.len()
            && matches!(
                self.bytes[self.at],
                b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
            )
        {
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).unwrap_or_default();
        if text.parse::<f64>().is_err() {
            self.at = start;
            return Err(self.error("a number"));
        }
        Ok(J::Num(text.to_string()))
    }

    fn string(&mut self) -> Result<String, String> {
        self.at += 1; // the opening quote
        let mut out = String::new();
        loop {
            let Some(&b) = self.bytes.get(self.at) else {
                return Err(self.error("a closing quote"));
            };
            self.at += 1;
            match b {
                b'"' => return Ok(out),
                b'\\' => {
                    let Some(&e) = self.bytes.get(self.at) else {
                        return Err(self.error("an escape"));
                    };
                    self.at += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hex = self
                                .bytes
                                .get(self.at..self.at + 4)
                                .and_then(|h| std::str::from_utf8(h).ok());
                            let code = hex
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .ok_or_else(|| self.error("4 hex digits"))?;
                            self.at += 4;
                            out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                        }
                        _ => return Err(self.error("a valid escape")),
                    }
                }
                _ => {
                    // Copy one whole UTF-8 character.
                    let start = self.at - 1;
                    let len = match b {
                        0x00..=0x7f => 1,
                        0xc0..=0xdf => 2,
                        0xe0..=0xef => 3,
                        _ => 4,
                    };
                    let end = (start + len).min(self.bytes.len());
                    out.push_str(
                        std::str::from_utf8(&self.bytes[start..end])
                            .map_err(|_| self.error("UTF-8"))?,
                    );
                    self.at = end;
                }
            }
        }
    }

    fn array(&mut self) -> Result<J, String> {
        self.at += 1;
        let mut items = Vec::new();
        if self.eat(b']') {
            return Ok(J::Arr(items));
        }
        loop {
            items.push(self.value()?);
            if self.eat(b']') {
                return Ok(J::Arr(items));
            }
            if !self.eat(b',') {
                return Err(self.error("',' or ']'"));
            }
        }
    }

    fn object(&mut self) -> Result<J, String> {
        self.at += 1;
        let mut pairs = Vec::new();
        if self.eat(b'}') {
            return Ok(J::Obj(pairs));
        }
        loop {
            self.space();
            if self.bytes.get(self.at) != Some(&b'"') {
                return Err(self.error("a key in quotes"));
            }
            let key = self.string()?;
            if !self.eat(b':') {
                return Err(self.error("':'"));
            }
            pairs.push((key, self.value()?));
            if self.eat(b'}') {
                return Ok(J::Obj(pairs));
            }
            if !self.eat(b',') {
                return Err(self.error("',' or '}'"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keeping_key_order_and_reports_where_it_fails() {
        let v = parse(r#" {"z": 1, "a": [true, null, -2.5e3], "s": "x\"\u0041"} "#).unwrap();
        assert_eq!(
            v.pretty(),
            "{\n  \"z\": 1,\n  \"a\": [\n    true,\n    null,\n    -2.5e3\n  ],\n  \"s\": \"x\\\"A\"\n}"
        );
        assert_eq!(
            parse_list(r#"{"name": "a"}, {"name": "b"}"#).unwrap().len(),
            2
        );
        assert_eq!(parse(r#"{"a" 1}"#).unwrap_err(), "expected ':' at byte 5");
        assert!(parse("{").is_err() && parse("[1,]").is_err() && parse("\"x").is_err());
    }

    #[test]
    fn prints_like_go_json_indent() {
        let v = obj([
            ("a", J::Int(1)),
            ("b", J::Arr(vec![s("x<y"), J::Obj(vec![])])),
            ("c", obj([("d", J::Bool(true))])),
        ]);
        assert_eq!(
            v.pretty(),
            "{\n  \"a\": 1,\n  \"b\": [\n    \"x\\u003cy\",\n    {}\n  ],\n  \"c\": {\n    \"d\": true\n  }\n}"
        );
    }
}
