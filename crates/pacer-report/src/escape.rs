//! Escaping for everything that ends up in the report, the CSV file or the metrics text.
//!
//! Names come from user plans and values from server headers, so nothing is written raw.

use std::fmt;

/// `text` safe inside HTML element content and inside double- or single-quoted attributes
/// (also SVG text). Control characters other than tab and newline become U+FFFD, so a hostile
/// header cannot smuggle anything the parser treats specially.
pub fn html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    push_html(&mut out, text);
    out
}

/// [`html`] appended to `out`.
pub fn push_html(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

/// `Display` adapter: `format!("<td>{}</td>", Html(name))`.
pub struct Html<'a>(pub &'a str);

impl fmt::Display for Html<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&html(self.0))
    }
}

/// One CSV field (RFC 4180): quoted when it holds a comma, quote or line break. A text field
/// that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) gets a leading
/// `'`, as OWASP recommends for CSV files that carry outside data.
pub fn csv_text(text: &str) -> String {
    let guarded = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// A Prometheus label value: backslash, double quote and line feed escaped, as the text
/// exposition format requires.
pub fn prom_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_markup_quotes_and_controls() {
        assert_eq!(
            html(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(html("a\u{0}b\u{1b}c\nd"), "a\u{fffd}b\u{fffd}c\nd");
        assert_eq!(html("plain ümlaut"), "plain ümlaut");
        assert_eq!(format!("{}", Html("<b>")), "&lt;b&gt;");
    }

    #[test]
    fn csv_quotes_and_guards_formulas() {
        assert_eq!(csv_text("plain"), "plain");
        assert_eq!(csv_text("a,b"), "\"a,b\"");
        assert_eq!(csv_text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_text("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_text("-1,2"), "\"'-1,2\"");
        assert_eq!(csv_text("line\nbreak"), "\"line\nbreak\"");
    }

    #[test]
    fn prometheus_label_values_are_escaped() {
        assert_eq!(prom_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(prom_label("x\ny"), "x\\ny");
    }

    proptest::proptest! {
        #[test]
        fn escaped_html_never_holds_markup(s in ".*") {
            let e = html(&s);
            proptest::prop_assert!(!e.contains(['<', '>', '"', '\'']));
            // every & starts an entity we wrote
            for (i, _) in e.match_indices('&') {
                let rest = &e[i..];
                proptest::prop_assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"].iter().any(|p| rest.starts_with(p))
                );
            }
        }
    }
}
