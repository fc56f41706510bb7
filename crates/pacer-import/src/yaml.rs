//! A YAML document with comments, and its writer.
//!
//! An imported plan is read by a person before it is run: every approximation and every
//! element left out is a comment at the place it came from. serde's YAML writers have no
//! comments, so the importer builds this small tree and writes it itself. Every string is
//! written double-quoted with JSON's escapes (a subset of YAML's double-quoted escapes), so no
//! value can be read back as another type or break out of its line; keys are quoted unless
//! they are plain identifiers.

use serde_json::Value;

/// A YAML node: a scalar (any JSON value that is not a container), a mapping or a sequence.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Scalar(Value),
    Map(Map),
    Seq(Vec<Item>),
}

/// A mapping, in insertion order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map(pub Vec<Entry>);

/// One key of a mapping, with the comment lines written above it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Node,
    pub comments: Vec<String>,
}

/// One element of a sequence, with the comment lines written above it.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub value: Node,
    pub comments: Vec<String>,
}

/// Spaces per nesting level.
const INDENT: usize = 2;

impl Map {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `key` (replacing an earlier value of the same key, keeping its place).
    pub fn set(&mut self, key: &str, value: impl Into<Node>) -> &mut Entry {
        let value = value.into();
        match self.0.iter().position(|e| e.key == key) {
            Some(i) => {
                self.0[i].value = value;
                &mut self.0[i]
            }
            None => {
                self.0.push(Entry {
                    key: key.to_string(),
                    value,
                    comments: Vec::new(),
                });
                let last = self.0.len() - 1;
                &mut self.0[last]
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.0.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Entry {
    /// Add comment lines above this entry.
    pub fn comment(&mut self, text: impl AsRef<str>) -> &mut Self {
        self.comments.extend(comment_lines(text.as_ref()));
        self
    }
}

impl Item {
    pub fn new(value: impl Into<Node>) -> Self {
        Self {
            value: value.into(),
            comments: Vec::new(),
        }
    }
}

impl From<Map> for Node {
    fn from(m: Map) -> Self {
        Node::Map(m)
    }
}

impl From<Vec<Item>> for Node {
    fn from(v: Vec<Item>) -> Self {
        Node::Seq(v)
    }
}

impl From<&str> for Node {
    fn from(s: &str) -> Self {
        Node::Scalar(Value::String(s.to_string()))
    }
}

impl From<String> for Node {
    fn from(s: String) -> Self {
        Node::Scalar(Value::String(s))
    }
}

impl From<u64> for Node {
    fn from(n: u64) -> Self {
        Node::Scalar(Value::from(n))
    }
}

impl From<Value> for Node {
    /// A JSON value as YAML: objects and arrays become mappings and sequences.
    fn from(v: Value) -> Self {
        match v {
            Value::Object(o) => Node::Map(Map(o
                .into_iter()
                .map(|(key, v)| Entry {
                    key,
                    value: v.into(),
                    comments: Vec::new(),
                })
                .collect())),
            Value::Array(a) => Node::Seq(a.into_iter().map(Item::new).collect()),
            scalar => Node::Scalar(scalar),
        }
    }
}

/// Comment text as lines, each without control characters (so a name read from a file can
/// never end the comment and start YAML of its own).
pub fn comment_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect()
}

/// Write a document: `header` comment lines, then the mapping.
pub fn write(header: &[String], doc: &Map) -> String {
    let mut out = String::new();
    for l in header {
        push_comment(&mut out, 0, l);
    }
    write_map(&mut out, doc, 0);
    out
}

fn push_comment(out: &mut String, indent: usize, line: &str) {
    out.push_str(&" ".repeat(indent));
    if line.is_empty() {
        out.push_str("#\n");
    } else {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
}

fn write_map(out: &mut String, m: &Map, indent: usize) {
    for e in &m.0 {
        for c in &e.comments {
            push_comment(out, indent, c);
        }
        out.push_str(&" ".repeat(indent));
        out.push_str(&key(&e.key));
        out.push(':');
        write_value(out, &e.value, indent);
    }
}

/// The value after `key:` (on the same line for scalars and empty containers).
fn write_value(out: &mut String, v: &Node, indent: usize) {
    match v {
        Node::Scalar(s) => {
            out.push(' ');
            out.push_str(&scalar(s));
            out.push('\n');
        }
        Node::Map(m) if m.is_empty() => out.push_str(" {}\n"),
        Node::Seq(s) if s.is_empty() => out.push_str(" []\n"),
        Node::Map(m) => {
            out.push('\n');
            write_map(out, m, indent + INDENT);
        }
        Node::Seq(s) => {
            out.push('\n');
            write_seq(out, s, indent + INDENT);
        }
    }
}

fn write_seq(out: &mut String, s: &[Item], indent: usize) {
    for item in s {
        for c in &item.comments {
            push_comment(out, indent, c);
        }
        match &item.value {
            Node::Scalar(v) => {
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                out.push_str(&scalar(v));
                out.push('\n');
            }
            Node::Map(m) if !m.is_empty() => {
                // The mapping at indent + 2, its first key line starting with "- " instead.
                let mut inner = String::new();
                write_map(&mut inner, m, indent + INDENT);
                let pad = " ".repeat(indent + INDENT);
                let mut dashed = false;
                for line in inner.lines() {
                    let is_key_line = !line.trim_start().starts_with('#');
                    if !dashed && is_key_line {
                        out.push_str(&" ".repeat(indent));
                        out.push_str("- ");
                        out.push_str(line.strip_prefix(pad.as_str()).unwrap_or(line));
                        dashed = true;
                    } else {
                        out.push_str(line);
                    }
                    out.push('\n');
                }
            }
            Node::Map(_) => {
                out.push_str(&" ".repeat(indent));
                out.push_str("- {}\n");
            }
            Node::Seq(inner) if inner.is_empty() => {
                out.push_str(&" ".repeat(indent));
                out.push_str("- []\n");
            }
            Node::Seq(inner) => {
                out.push_str(&" ".repeat(indent));
                out.push_str("-\n");
                write_seq(out, inner, indent + INDENT);
            }
        }
    }
}

/// A key: plain when it is an identifier YAML reads as that string, else quoted.
fn key(k: &str) -> String {
    let plain = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "off" | "y" | "n"
        );
    if plain { k.to_string() } else { quoted(k) }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => quoted(s),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // Containers are written as JSON flow collections, which are YAML too.
        other => other.to_string(),
    }
}

/// A double-quoted string with JSON's escapes (valid YAML: its escapes are a superset).
fn quoted(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_through_a_yaml_reader() {
        let mut m = Map::new();
        m.set("name", "a \"plan\"\nwith: #stuff")
            .comment("a comment\nsecond line");
        let mut inner = Map::new();
        inner.set("x", 1u64);
        inner.set("on", Value::Bool(true));
        let mut item = Item::new(inner);
        item.comments.push("item".into());
        m.set("list", vec![item, Item::new("s"), Item::new(Map::new())]);
        m.set(
            "json",
            Node::from(serde_json::json!({"a": [1, {"b": null}], "c": {}})),
        );
        let text = write(&["header".into()], &m);
        let back: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            back,
            serde_json::json!({
                "name": "a \"plan\"\nwith: #stuff",
                "list": [{"x": 1, "on": true}, "s", {}],
                "json": {"a": [1, {"b": null}], "c": {}}
            }),
            "{text}"
        );
        assert!(text.starts_with("# header\n"));
    }
}
