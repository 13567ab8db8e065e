//! Keeping what outside input puts into messages short: a 50 MB value in the config or a
//! 10 MB Consul error page must not become a 50 MB log line or `status` answer.

/// `text` cut to at most `max` bytes on a character boundary, with `…` and the full size
/// when something was left out.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// `message` with every double-quoted span longer than `max` bytes cut (`cut`): the values
/// a message quotes are the user's, the rest is ours.
pub fn cut_quoted(message: &str, max: usize) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut rest = message;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        let Some(close) = rest.find('"') else {
            out.push_str(&cut(rest, max));
            return out;
        };
        out.push_str(&cut(&rest[..close], max));
        out.push('"');
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_long_values_only() {
        assert_eq!(cut("short", 80), "short");
        assert_eq!(cut("ééé", 3), "é… (6 bytes)");
        let long = "y".repeat(200);
        assert_eq!(
            cut_quoted(
                &format!("user \"{long}\" is neither a user name nor a numeric uid"),
                80
            ),
            format!(
                "user \"{}… (200 bytes)\" is neither a user name nor a numeric uid",
                "y".repeat(80)
            )
        );
        assert_eq!(cut_quoted("a \"b\" c \"d", 80), "a \"b\" c \"d");
    }
}
